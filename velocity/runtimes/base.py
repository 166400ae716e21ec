"""The one interface every container runtime implements, its models and its errors."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from velocity.errors import VelocityError

CONTAINER_ENV_KEYS: tuple[str, ...] = (
    "PROJECT_ID",
    "SESSION_ID",
    "SNAPSHOT_URL",
    "REALTIME_URL",
    "REALTIME_TOKEN",
)
"""The whole contract between platform and container: these five variables and no others."""

LABEL_SESSION_ID = "velocity.session_id"
LABEL_PROJECT_ID = "velocity.project_id"
LABEL_MANAGED = "velocity.managed"
RESERVED_LABELS = frozenset({LABEL_SESSION_ID, LABEL_PROJECT_ID, LABEL_MANAGED})

ContainerState = Literal["starting", "running", "exited", "unknown"]


class RuntimeFailure(VelocityError):
    """A runtime could not do what was asked; the message says what failed."""

    code = "runtime_failure"
    http_status = 502


class ContainerNotFound(RuntimeFailure):
    code = "container_not_found"
    http_status = 404

    @property
    def container_id(self) -> str:
        return str(self.facts["container_id"])


class UnknownRuntime(RuntimeFailure):
    """No runtime has this name: a configuration mistake, never worth a retry."""

    code = "unknown_runtime"
    http_status = 500


def _check_value(name: str, value: str) -> None:
    if not value or "\x00" in value:
        raise ValueError(f"{name} must be a non-empty string without NUL bytes")


class ContainerSpec(BaseModel):
    """What to start: one preview session's agent, with exactly the contract's environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: str
    project_id: str
    env: dict[str, str]
    dev_command: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _contract(self) -> ContainerSpec:
        missing = [key for key in CONTAINER_ENV_KEYS if key not in self.env]
        extra = sorted(set(self.env) - set(CONTAINER_ENV_KEYS))
        if missing or extra:
            raise ValueError(
                f"a container's env is exactly {', '.join(CONTAINER_ENV_KEYS)}; "
                f"missing: {missing or 'none'}, not allowed: {extra or 'none'}"
            )
        for key, value in self.env.items():
            _check_value(key, value)
        if self.env["SESSION_ID"] != self.session_id:
            raise ValueError("env SESSION_ID differs from session_id")
        if self.env["PROJECT_ID"] != self.project_id:
            raise ValueError("env PROJECT_ID differs from project_id")
        if self.dev_command is not None:
            _check_value("dev_command", self.dev_command)
        reserved = sorted(RESERVED_LABELS & set(self.labels))
        if reserved:
            raise ValueError(f"labels {reserved} are set by the runtime itself")
        return self

    def container_labels(self) -> dict[str, str]:
        """The labels every runtime puts on the container: the caller's and the managed ones."""
        return {
            **self.labels,
            LABEL_SESSION_ID: self.session_id,
            LABEL_PROJECT_ID: self.project_id,
            LABEL_MANAGED: "true",
        }


class ContainerInfo(BaseModel):
    """Where a container is and how it is doing, as its runtime sees it now."""

    model_config = ConfigDict(frozen=True)

    container_id: str
    runtime: str
    url: str = Field(description="Where the preview's dev server is reachable.")
    health_url: str = Field(description="The agent's /healthz.")
    labels: dict[str, str]
    state: ContainerState
    exit_code: int | None = Field(
        default=None, description="Set once exited, when known; 128+N means killed by signal N."
    )
    started_at: datetime | None = None


class Runtime(Protocol):
    """Where preview containers run. Every method is safe to call from a restarted process:
    a runtime keeps its state in the place containers run, never in memory."""

    name: str

    def start(self, spec: ContainerSpec) -> ContainerInfo:
        """Start the agent with exactly `spec.env` (plus the runtime's own PORT and dirs)."""
        ...

    def stop(self, container_id: str, timeout: float = 10.0, *, remove: bool = False) -> None:
        """Ask the container to end, kill it after `timeout` seconds; a gone one is fine."""
        ...

    def remove(self, container_id: str) -> None:
        """Stop the container if needed and delete what it leaves (logs, files)."""
        ...

    def status(self, container_id: str) -> ContainerInfo:
        """The container now; raises ContainerNotFound if the runtime has no such one."""
        ...

    def logs(self, container_id: str, tail: int | None = None) -> str:
        """Its stdout and stderr, the last `tail` lines if given."""
        ...

    def list(self, labels: dict[str, str] | None = None) -> builtins.list[ContainerInfo]:
        """Every container of this runtime carrying all of `labels` (for orphan cleanup)."""
        ...
