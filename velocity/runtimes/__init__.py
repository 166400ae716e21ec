"""Where preview containers run, chosen by name: the interface, its models and the registry."""

from __future__ import annotations

from collections.abc import Callable

from velocity.runtimes.base import (
    CONTAINER_ENV_KEYS,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    Runtime,
    RuntimeFailure,
    UnknownRuntime,
)
from velocity.runtimes.process import ProcessRuntime
from velocity.settings import Settings

__all__ = [
    "CONTAINER_ENV_KEYS",
    "ContainerInfo",
    "ContainerNotFound",
    "ContainerSpec",
    "ContainerState",
    "ProcessRuntime",
    "Runtime",
    "RuntimeFailure",
    "UnknownRuntime",
    "get_runtime",
]


def _process_runtime(settings: Settings) -> Runtime:
    return ProcessRuntime(settings.home / "runtimes" / "process")


def _docker_runtime(settings: Settings) -> Runtime:
    from velocity.runtimes.docker import DockerRuntime, default_agent_image

    return DockerRuntime(settings.docker_image or default_agent_image(),
                         docker_host=settings.docker_host or None, memory=settings.docker_memory,
                         cpus=settings.docker_cpus, pids_limit=settings.docker_pids_limit,
                         tmp_size=settings.docker_tmp_size,
                         workspace_root=settings.docker_workspace_root)


def _fly_runtime(settings: Settings) -> Runtime:
    from velocity.runtimes.fly import FlyRuntime

    token = settings.fly_api_token.get_secret_value() if settings.fly_api_token else ""
    return FlyRuntime(settings.fly_app or "", settings.fly_image or "", token,
                      api_url=settings.fly_api_url, logs_url=settings.fly_logs_url,
                      region=settings.fly_region, cpu_kind=settings.fly_cpu_kind,
                      cpus=settings.fly_cpus, memory_mb=settings.fly_memory_mb,
                      restart_retries=settings.fly_restart_retries)


RUNTIMES: dict[str, Callable[[Settings], Runtime]] = {
    "process": _process_runtime,
    "docker": _docker_runtime,
    "fly": _fly_runtime,
}
"""Every runtime by name (modules beyond process are imported when first chosen)."""


def get_runtime(name: str, settings: Settings) -> Runtime:
    """The runtime called `name`, configured from `settings`."""
    try:
        make = RUNTIMES[name]
    except KeyError:
        raise UnknownRuntime(
            f"unknown runtime {name!r}; known runtimes: {', '.join(sorted(RUNTIMES))}",
            runtime=name,
            known=sorted(RUNTIMES),
        ) from None
    return make(settings)
