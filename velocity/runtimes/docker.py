"""The docker runtime: each session container is a hardened Docker container of the agent image.

Containers are created, started, stopped, removed and read through prefect-docker's container
tasks (their functions, called directly, so they log into the calling task run when there is
one); inspecting and listing use the same engine client. Every container gets:

- exactly the contract's five environment variables (ports and dev command are arguments of
  the image's entrypoint, so `docker inspect` shows nothing else);
- memory (no swap on top), CPU and process limits; a read-only root filesystem where only the
  workspace (`/workspace`, the project's parent) and a size-bounded tmpfs `/tmp` are
  writable; every capability dropped; no-new-privileges; a non-root user; an init;
- host networking, so the agent reaches the gateway and the snapshot URL as the orchestrator
  does, and its dev server and /healthz listen on ports of this host;
- labels with its session and project (and its ports), which are all the state there is:
  any process that reaches the engine can answer for any container.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import os
import re
import secrets
import shutil
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
from docker.types import Mount
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import disable_run_logger
from prefect_docker.containers import (
    create_docker_container,
    get_docker_container_logs,
    remove_docker_container,
    start_docker_container,
    stop_docker_container,
)
from prefect_docker.host import DockerHost

from velocity.runtimes.agent_image import AGENT_GID, AGENT_UID, agent_image_tag
from velocity.runtimes.base import (
    LABEL_MANAGED,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    RuntimeFailure,
)
from velocity.runtimes.process import free_loopback_ports

T = TypeVar("T")
LABEL_PORT = "velocity.docker.port"
LABEL_HEALTH_PORT = "velocity.docker.health_port"
RUNTIME_LABELS = frozenset({LABEL_PORT, LABEL_HEALTH_PORT})
CONTAINER_NAME = re.compile(r"velocity-[0-9a-f]{8}-[0-9a-f]{8}")
WORKSPACE = "/workspace"
STATES: dict[str, ContainerState] = {
    "created": "starting",
    "restarting": "starting",
    "running": "running",
    "removing": "exited",
    "exited": "exited",
    "dead": "exited",
}


@lru_cache(maxsize=1)
def default_agent_image() -> str:
    """The agent image this checkout builds (`velocity image build`); computed once."""
    return agent_image_tag()


class DockerRuntime:
    """Runs the agent in containers of `image` on the engine at `docker_host`."""

    name = "docker"

    def __init__(
        self,
        image: str,
        *,
        docker_host: str | None = None,
        memory: str = "512m",
        cpus: float = 1.0,
        pids_limit: int = 256,
        tmp_size: str = "64m",
        workspace_root: Path | None = None,
        api_timeout: int = 60,
    ) -> None:
        if not image:
            raise RuntimeFailure("the docker runtime needs an image (VELOCITY_DOCKER_IMAGE)")
        self.image = image
        self.host = DockerHost(base_url=docker_host, timeout=api_timeout)
        self.memory = memory
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.tmp_size = tmp_size
        self.workspace_root = Path(workspace_root).resolve() if workspace_root else None

    def start(self, spec: ContainerSpec) -> ContainerInfo:
        spec = ContainerSpec.model_validate(spec.model_dump())  # its env dict may have changed
        name = f"velocity-{spec.session_id.replace('-', '')[:8]}-{secrets.token_hex(4)}"
        port, health_port = free_loopback_ports(2)  # host network: they are this host's ports
        command = ["--port", str(port), "--health-port", str(health_port)]
        if spec.dev_command is not None:
            command += ["--dev-command", spec.dev_command]
        options = self._hardening()
        options.update(self._workspace(name))
        options["labels"] = {**spec.container_labels(), LABEL_PORT: str(port),
                             LABEL_HEALTH_PORT: str(health_port)}
        try:
            with self._engine(f"create container {name} from {self.image}"):
                self._run(create_docker_container.fn(
                    image=self.image, command=command, name=name, detach=True,
                    environment=dict(spec.env), docker_host=self.host, **options))
            with self._engine(f"start container {name}", container_id=name):
                self._run(start_docker_container.fn(container_id=name, docker_host=self.host))
        except RuntimeFailure:
            self._discard(name)
            raise
        return self.status(name)

    def stop(self, container_id: str, timeout: float = 10.0, *, remove: bool = False) -> None:
        try:
            with self._engine(f"stop container {container_id}", container_id=container_id):
                self._run(stop_docker_container.fn(container_id=container_id,
                                                   timeout=max(1, math.ceil(timeout)),
                                                   docker_host=self.host))
        except ContainerNotFound:
            pass
        if remove:
            self.remove(container_id)

    def remove(self, container_id: str) -> None:
        try:
            with self._engine(f"remove container {container_id}", container_id=container_id):
                self._run(remove_docker_container.fn(container_id=container_id, force=True,
                                                     v=True, docker_host=self.host))
        except ContainerNotFound:
            pass
        self._remove_workspace(container_id)

    def status(self, container_id: str) -> ContainerInfo:
        with self._engine(f"inspect container {container_id}", container_id=container_id):
            with self.host.get_client() as client:
                attrs = client.api.inspect_container(container_id)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_MANAGED) != "true":
            raise ContainerNotFound(f"container {container_id!r} is not one of velocity's",
                                    container_id=container_id, runtime=self.name)
        return self._info(attrs)

    def logs(self, container_id: str, tail: int | None = None) -> str:
        with self._engine(f"read the logs of {container_id}", container_id=container_id):
            return self._run(get_docker_container_logs.fn(
                container_id=container_id, docker_host=self.host, stdout=True, stderr=True,
                tail="all" if tail is None else max(0, tail)))

    def list(self, labels: dict[str, str] | None = None) -> builtins.list[ContainerInfo]:
        wanted = {**(labels or {}), LABEL_MANAGED: "true"}
        filters = {"label": [f"{key}={value}" for key, value in wanted.items()]}
        with self._engine("list containers"), self.host.get_client() as client:
            summaries = client.api.containers(all=True, filters=filters)
            found = []
            for summary in summaries:
                try:
                    found.append(self._info(client.api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:
                    continue  # removed meanwhile
        return sorted(found, key=lambda info: (info.started_at or datetime.min,
                                               info.container_id))

    def _hardening(self) -> dict[str, Any]:
        return {
            "network_mode": "host",
            "mem_limit": self.memory,
            "memswap_limit": self.memory,
            "nano_cpus": int(self.cpus * 1_000_000_000),
            "pids_limit": self.pids_limit,
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmp_size}"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "init": True,
        }

    def _workspace(self, name: str) -> dict[str, Any]:
        """The one writable mount: a host directory under workspace_root, else an anonymous
        volume (removed with the container)."""
        if self.workspace_root is None:
            return {"mounts": [Mount(target=WORKSPACE, source=None, type="volume")]}
        directory = self.workspace_root / name
        directory.mkdir(parents=True, mode=0o700)
        options: dict[str, Any] = {"mounts": [Mount(target=WORKSPACE, source=str(directory),
                                                    type="bind")]}
        if os.geteuid() == 0:
            os.chown(directory, AGENT_UID, AGENT_GID)
        else:  # the image's user could not write our directory: run as its owner (not root)
            options["user"] = f"{os.getuid()}:{os.getgid()}"
        return options

    def _info(self, attrs: dict[str, Any]) -> ContainerInfo:
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        state = attrs.get("State") or {}
        status = STATES.get(str(state.get("Status")), "unknown")
        port, health_port = labels.get(LABEL_PORT, "0"), labels.get(LABEL_HEALTH_PORT, "0")
        return ContainerInfo(
            container_id=str(attrs.get("Name", "")).lstrip("/") or str(attrs["Id"]),
            runtime=self.name,
            url=f"http://127.0.0.1:{port}",
            health_url=f"http://127.0.0.1:{health_port}/healthz",
            labels={key: value for key, value in labels.items() if key not in RUNTIME_LABELS},
            state=status,
            exit_code=int(state["ExitCode"]) if status == "exited" else None,
            started_at=_timestamp(state.get("StartedAt")) or _timestamp(attrs.get("Created")),
        )

    def _discard(self, name: str) -> None:
        """Undo a start that failed half-way; what cannot be undone is left to cleanup."""
        try:
            self.remove(name)
        except RuntimeFailure:
            self._remove_workspace(name)

    def _remove_workspace(self, container_id: str) -> None:
        if self.workspace_root is not None and CONTAINER_NAME.fullmatch(container_id):
            shutil.rmtree(self.workspace_root / container_id, ignore_errors=True)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a prefect-docker task's function here; outside a Prefect run its logger is off."""
        in_run = TaskRunContext.get() is not None or FlowRunContext.get() is not None
        with nullcontext() if in_run else disable_run_logger():
            return asyncio.run(coroutine)

    @contextmanager
    def _engine(self, what: str, container_id: str | None = None) -> Iterator[None]:
        """Engine errors as the runtime's: a missing container, else a failure naming `what`."""
        try:
            yield
        except docker.errors.NotFound as error:
            if container_id is None or isinstance(error, docker.errors.ImageNotFound):
                raise RuntimeFailure(f"cannot {what}: {_explain(error)}",
                                     image=self.image) from error
            raise ContainerNotFound(f"no docker container {container_id!r}",
                                    container_id=container_id, runtime=self.name) from None
        except docker.errors.DockerException as error:
            raise RuntimeFailure(f"cannot {what} on the Docker engine "
                                 f"{self.host.base_url or '(DOCKER_HOST or default)'}: "
                                 f"{_explain(error)}", container_id=container_id) from error


def _explain(error: Exception) -> str:
    text = str(error)
    if isinstance(error, docker.errors.ImageNotFound) or "No such image" in text:
        return f"{text} (build the agent image with `velocity image build`)"
    if "Connection refused" in text or "FileNotFoundError" in text or "No such file" in text:
        return f"the engine is not reachable ({text})"
    return text


def _timestamp(value: Any) -> datetime | None:
    """Docker's RFC 3339 times have nanoseconds; a never-started container has year 1."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value)
    if not match:
        return None
    fraction = (match.group(2) or "")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")

