"""Build the offline sandbox image without a registry: debootstrap a minimal Debian, `docker import` it.

The image carries only a minimal root file system plus the shared libraries
the host's Python build links against; the interpreter, the venv and the
project are mounted read-only from the host at run time (same Debian release
as the host, so glibc matches). Idempotent: an existing image is kept unless
`force=True`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from nncaption.netapi.errors import NNCaptionError

OFFLINE_IMAGE = "nncaption-sandbox:offline"
# Libraries the host's Python build and its extension modules link against, beyond Debian's minbase.
EXTRA_PACKAGES: tuple[str, ...] = (
    "libbz2-1.0",
    "liblzma5",
    "zlib1g",
    "libffi8",
    "libssl3",
    "libsqlite3-0",
    "libncursesw6",
    "libreadline8",
    "libtinfo6",
    "libexpat1",
    "libcrypt1",
    "libtirpc3",
    "libuuid1",
    "libgdbm6",
    "libgcc-s1",
    "libstdc++6",
    "libgomp1",
    "ca-certificates",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class ImageBuildError(NNCaptionError):
    category = "sandbox-image"


def apt_mirror(sources: list[Path] | None = None) -> str:
    """The Debian mirror apt uses on this host (deb822 `URIs:` or one-line `deb URL suite ...`)."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^\s*URIs:\s*(\S+)", text, re.MULTILINE):
            if "security" not in m.group(1) and "debian" in m.group(1):
                return m.group(1).rstrip("/")
        for m in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.MULTILINE):
            if "security" not in m.group(1) and "debian" in m.group(1):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def host_suite() -> str:
    """The host's Debian codename (e.g. bookworm), so that the image's glibc matches the host Python."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    m = re.search(r"^VERSION_CODENAME=(\w+)", text, re.MULTILINE)
    return m.group(1) if m else "bookworm"


def image_exists(client: object, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)  # type: ignore[attr-defined]
        return True
    except docker.errors.ImageNotFound:
        return False


def build_offline_image(
    tag: str = OFFLINE_IMAGE,
    *,
    force: bool = False,
    mirror: str | None = None,
    suite: str | None = None,
    workdir: Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """debootstrap --variant=minbase + docker import; returns the image id (skips when present)."""
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:  # noqa: BLE001
        raise ImageBuildError(
            f"the docker engine is unreachable: {e}", "start dockerd (bash .ci/services.sh) and retry."
        ) from e
    if not force and image_exists(client, tag):
        log(f"{tag} already exists (use --force to rebuild)")
        return str(client.images.get(tag).id)
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed", "apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root", "run `nncaption sandbox build-image --offline` as root.")
    mirror = mirror or apt_mirror()
    suite = suite or host_suite()
    tmp = Path(tempfile.mkdtemp(prefix="nncaption-rootfs-", dir=workdir))
    rootfs = tmp / "rootfs"
    try:
        log(f"debootstrap {suite} from {mirror} (minbase) ...")
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(EXTRA_PACKAGES)}",
            suite,
            str(rootfs),
            mirror,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ImageBuildError(
                f"debootstrap failed ({r.returncode}): {(r.stderr or r.stdout)[-1500:]}",
                f"check that {mirror} is reachable (apt-get update works) or pass --mirror.",
            )
        _slim(rootfs)
        tar = tmp / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        repo, _, version = tag.partition(":")
        log(f"docker import -> {tag}")
        client.api.import_image_from_file(
            str(tar), repository=repo, tag=version or "latest", changes=['CMD ["/bin/sh"]']
        )
        return str(client.images.get(tag).id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _slim(rootfs: Path) -> None:
    """Drop apt caches and documentation: the image only runs the host's Python.

    /root is opened to 0755 (it is empty): the host's interpreter may live under /root
    (pyenv) and is mounted there, and the job runs as uid 65534.
    """
    (rootfs / "root").chmod(0o755)
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        p = rootfs / rel
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def build_context(dest: Path) -> Path:
    """A small docker build context for sandbox/image/Dockerfile: the project sources, no venv, no runs."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise ImageBuildError(
            f"no pyproject.toml above {Path(__file__).parent}", "build the image from a source checkout."
        )
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "runs", "*.egg-info", ".git")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    for pkg in ("nncaption", "netapi", "sandbox", "agents", "prompts", "graph", "evals"):
        if (root / pkg).is_dir():
            shutil.copytree(root / pkg, dest / pkg, ignore=ignore)
    shutil.copy2(root / "sandbox" / "image" / "Dockerfile", dest / "Dockerfile")
    return dest
