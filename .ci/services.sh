#!/usr/bin/env bash
# Install and start what the tests use for real: the Docker engine, debootstrap (for the offline sandbox
# image), bubblewrap (the local sandbox's namespaces, seccomp filter and file-system view) and gVisor
# (runsc, registered with dockerd as runtime "runsc" with --network=none, so the runsc test runs).
# The offline image `nncaption-sandbox:offline` is not built here (the venv may not exist yet): the docker
# tests build it once on first use (tests/sandbox_support.py: ensure_offline_image, ~2-3 minutes with
# `debootstrap --variant=minbase` from apt's mirror) and the engine keeps it. By hand:
#   .venv/bin/nncaption sandbox build-image --offline
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v chromium >/dev/null || need+=(chromium)  # tests/test_viewer_browser.py (Playwright drives it)
command -v runsc >/dev/null || need+=(runsc)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# gVisor: register runsc in /etc/docker/daemon.json (kept: other keys of an existing file are preserved).
runsc_path="$(command -v runsc)"
mkdir -p /etc/docker
python3 - "$runsc_path" <<'PY'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
try:
    conf = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
except ValueError:
    conf = {}
want = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
if conf.get("runtimes", {}).get("runsc") != want:
    conf.setdefault("runtimes", {})["runsc"] = want
    path.write_text(json.dumps(conf, indent=2) + "\n")
PY

if docker info >/dev/null 2>&1; then
  # a running engine reloads its runtimes on SIGHUP (no restart: running containers are kept)
  if ! docker info --format '{{json .Runtimes}}' | grep -q runsc; then
    pid="$(pgrep -xo dockerd || true)"
    [ -n "$pid" ] && kill -HUP "$pid"
    for _ in $(seq 1 20); do docker info --format '{{json .Runtimes}}' | grep -q runsc && break; sleep 0.5; done
  fi
else
  mkdir -p /var/log
  (setsid dockerd --storage-driver=overlay2 --iptables=false --bridge=none >/var/log/nncaption-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/nncaption-dockerd.log" >&2; tail -20 /var/log/nncaption-dockerd.log >&2; exit 1; }
fi
echo "docker engine: $(docker info --format '{{.ServerVersion}}'), runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"
