"""Sandboxes that run untrusted candidate code: local (default), docker, ray.

    from nncaption.sandbox import Job, Limits, get_sandbox
    result = get_sandbox("local").run(Job(job_dir, spec, Limits(timeout_s=600)))
"""

from __future__ import annotations

from typing import Any

from nncaption.netapi.errors import ConfigError

from .base import (
    CANCELLED,
    CRASHED,
    FAILED,
    KILLED,
    OK,
    OUT_OF_MEMORY,
    RUNNER_ENTRY,
    STATUSES,
    TIMEOUT,
    EventCallback,
    Job,
    Limits,
    RunResult,
    RunStatus,
    Sandbox,
)
from .gpus import GpuAllocator, parse_gpus

BACKENDS: tuple[str, ...] = ("local", "docker", "ray")


def get_sandbox(name: str = "local", **options: Any) -> Sandbox:
    """The sandbox backend `name` ("local", "docker" or "ray"), built with `options`.

    local:  isolation="auto"|"bwrap"|"unshare"|"none", drop_privileges=True, use_cgroups=True, use_seccomp=True
    docker: image="nncaption-sandbox:offline", runtime=None|"runsc", base_url=None, shm_size="1g", cpus=None
    both:   prewarm=True, max_warm=None, cpu_allocation=True, gpu_allocator=None (a GpuAllocator),
            disk_quota=True (sandbox.skeleton.BaseSandbox)
    ray:    address=None (else local ray.init), backend="local"|"docker", backend_options={}, max_retries=3,
            num_cpus=1

    Every backend has run / arun / run_many / arun_many / close and works as a (async) context manager.
    Warm (pre-started) processes are kept after each job for the next one with the same settings: close
    the sandbox (or use `with`) when done.
    """
    if name == "local":
        from .local import LocalSandbox

        return LocalSandbox(**options)
    if name == "docker":
        from .docker import DockerSandbox

        return DockerSandbox(**options)
    if name == "ray":
        from .ray_backend import RaySandbox

        return RaySandbox(**options)
    raise ConfigError(f"unknown sandbox {name!r}", f"use one of: {', '.join(BACKENDS)}.")


__all__ = [
    "BACKENDS",
    "CANCELLED",
    "CRASHED",
    "FAILED",
    "KILLED",
    "OK",
    "OUT_OF_MEMORY",
    "RUNNER_ENTRY",
    "STATUSES",
    "TIMEOUT",
    "EventCallback",
    "Job",
    "Limits",
    "GpuAllocator",
    "RunResult",
    "RunStatus",
    "Sandbox",
    "get_sandbox",
    "parse_gpus",
]
