"""`nncaption sandbox ...`: build the sandbox image, reap orphans, show which isolation applies here."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nncaption.netapi.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sandbox", help="sandbox images and maintenance")
    sub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")

    b = sub.add_parser("build-image", help="build the docker image jobs run in")
    b.add_argument("--offline", action="store_true",
                   help="no registry: debootstrap a minimal Debian and `docker import` it (the host's Python is "
                        "mounted at run time)")
    b.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    b.add_argument("--tag", default=None,
                   help="image tag (default nncaption-sandbox:offline, or nncaption-sandbox:latest)")
    b.add_argument("--mirror", default=None, help="Debian mirror for --offline (default: the one apt uses)")
    b.set_defaults(func=cmd_build_image)

    r = sub.add_parser("reap", help="remove containers and cgroups left by crashed runs")
    r.set_defaults(func=cmd_reap)

    pr = sub.add_parser("probe", help="run a probe job and print the isolation measures that apply on this host")
    pr.add_argument("--sandbox", choices=("local", "docker"), default="local")
    pr.set_defaults(func=cmd_probe)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_build_image(args: argparse.Namespace) -> int:
    if args.offline:
        from nncaption.sandbox.image_build import OFFLINE_IMAGE, build_offline_image

        image_id = build_offline_image(args.tag or OFFLINE_IMAGE, force=args.force, mirror=args.mirror)
        print(f"{args.tag or OFFLINE_IMAGE} {image_id}")
        return 0
    import docker

    from nncaption.sandbox.image_build import build_context

    tag = args.tag or "nncaption-sandbox:latest"
    with tempfile.TemporaryDirectory(prefix="nncaption-context-") as ctx:
        context = build_context(Path(ctx))
        try:
            client = docker.from_env(timeout=3600)
            image, logs = client.images.build(path=str(context), tag=tag, rm=True, nocache=args.force)
        except docker.errors.BuildError as e:
            raise ConfigError(f"docker build failed: {e}", "without a registry use --offline.") from e
        except docker.errors.DockerException as e:
            raise ConfigError(f"docker is unavailable: {e}", "start dockerd (bash .ci/services.sh).") from e
    for chunk in logs:
        if isinstance(chunk, dict) and "stream" in chunk:
            print(str(chunk["stream"]), end="")
    print(f"{tag} {image.id}")
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    from nncaption.sandbox import cgroups, quota

    groups = cgroups.reap_orphans()
    print(f"cgroups removed: {len(groups)}")
    print(f"job stages unmounted: {len(quota.reap_orphan_stages())}")
    try:
        from nncaption.sandbox.docker import DockerSandbox, DockerUnavailable

        containers = DockerSandbox().reap_orphans()
        print(f"containers removed: {len(containers)}")
    except DockerUnavailable as e:
        print(f"docker: skipped ({e.message})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from nncaption.netapi.job import JobSpec
    from nncaption.sandbox import Job, Limits, get_sandbox
    from nncaption.sandbox.probe import read_facts

    with tempfile.TemporaryDirectory(prefix="nncaption-probe-") as tmp:
        job_dir, data_dir = Path(tmp) / "job", Path(tmp) / "data"
        job_dir.mkdir()
        data_dir.mkdir()
        spec = JobSpec(data_dir=str(data_dir))
        with get_sandbox(args.sandbox, prewarm=False) as sb:
            result = sb.run(Job(job_dir, spec, Limits(timeout_s=60), entry="nncaption.sandbox.probe"))
        try:
            facts = read_facts(job_dir)
        except (OSError, ValueError, KeyError):
            facts = {}
    print(json.dumps({
        "status": result.status.value,
        "message": result.message,
        "isolation": result.isolation,
        "uid": facts.get("uid"),
        "network_interfaces": facts.get("interfaces"),
        "environment": sorted((facts.get("env") or {}).keys()),
        "capabilities": (facts.get("status") or {}),
        "seconds": result.timings.get("total_s"),
    }, indent=2))
    return 0 if result.ok else 1
