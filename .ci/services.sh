#!/usr/bin/env bash
# Install and start what the tests use for real: the Docker engine, debootstrap (for the offline sandbox
# image) and bubblewrap (the local sandbox's namespaces and file-system view).
# The offline image `nncaption-sandbox:offline` is not built here (the venv may not exist yet): the docker
# tests build it once on first use (tests/test_sandbox_support.py: ensure_offline_image, ~2-3 minutes with
# `debootstrap --variant=minbase` from apt's mirror) and the engine keeps it. By hand:
#   .venv/bin/nncaption sandbox build-image --offline
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v bwrap >/dev/null || need+=(bubblewrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  mkdir -p /var/log
  (setsid dockerd --storage-driver=overlay2 --iptables=false --bridge=none >/var/log/nncaption-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/nncaption-dockerd.log" >&2; tail -20 /var/log/nncaption-dockerd.log >&2; exit 1; }
fi
echo "docker engine: $(docker info --format '{{.ServerVersion}}')"
