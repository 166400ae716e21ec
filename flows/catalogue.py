"""The one catalogue of every workflow: name, where its flow lives, schedule, limits and tags.

Deployments, the API and webhooks find flows here by name, so a name, a schedule or a
concurrency limit is written once. Flows are imported only when loaded: reading the
catalogue costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from prefect import Flow


class UnknownWorkflow(KeyError):
    """No workflow has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"no workflow named {self.name!r}; known workflows: {', '.join(self.known)}"


@dataclass(frozen=True)
class Workflow:
    """A flow of the catalogue; `schedule` is a cron expression (UTC)."""

    name: str
    module: str
    function: str
    schedule: str | None = None
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()

    def load(self) -> Flow[..., Any]:
        """The flow object, imported now; TypeError if the name is not that flow's."""
        loaded = getattr(import_module(self.module), self.function)
        if not isinstance(loaded, Flow):
            raise TypeError(f"{self.module}.{self.function} is not a Prefect flow")
        if loaded.name != self.name:
            raise TypeError(f"{self.module}.{self.function} is the flow {loaded.name!r}, "
                            f"but the catalogue calls it {self.name!r}")
        return loaded


PROVISION_SESSION = Workflow("provision-session", "flows.sessions", "provision_session",
                             tags=("sessions",))
STOP_SESSION = Workflow("stop-session", "flows.sessions", "stop_session", tags=("sessions",))
BUILD_SNAPSHOT = Workflow("build-snapshot", "flows.snapshots", "build_snapshot_flow",
                          tags=("snapshots",))
BULK_GENERATE = Workflow("bulk-generate", "flows.generation", "bulk_generate",
                         tags=("files",))
ROLLOUT_FLAG = Workflow("rollout-flag", "flows.rollout", "rollout_flag", tags=("flags",))
CLEANUP = Workflow("cleanup", "flows.cleanup", "cleanup", schedule="* * * * *",
                   concurrency_limit=1, tags=("maintenance",))
ADOPT_LEGACY = Workflow("adopt-legacy", "flows.adoption", "adopt_legacy", tags=("files",))

WORKFLOWS: tuple[Workflow, ...] = (
    PROVISION_SESSION,
    STOP_SESSION,
    BUILD_SNAPSHOT,
    BULK_GENERATE,
    ROLLOUT_FLAG,
    CLEANUP,
    ADOPT_LEGACY,
)

_BY_NAME = {workflow.name: workflow for workflow in WORKFLOWS}


def by_name(name: str) -> Workflow:
    """The workflow called `name`; UnknownWorkflow (a KeyError) listing the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownWorkflow(name, sorted(_BY_NAME)) from None
