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


RUNTIMES: dict[str, Callable[[Settings], Runtime]] = {
    "process": _process_runtime,
}
"""Every runtime by name; docker and fly join here."""


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
