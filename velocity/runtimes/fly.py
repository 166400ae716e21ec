"""The fly runtime: each session container is a Fly Machine, driven through the Machines API.

A machine is created from the agent image with exactly the contract's five variables, guest
CPU and memory, an on-failure restart policy and auto-destroy, its labels as metadata, and
the image's entrypoint arguments (ports) as `init.cmd`. Fly keeps every fact about it, so
any orchestrator process can answer for any machine. Rate limits (429) and server errors
(5xx) are retried with exponential backoff; after the last try the error says what failed.
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from velocity.runtimes.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    RuntimeFailure,
)

AGENT_PORT = 8080
HEALTH_PORT = 8081
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
STATES: dict[str, ContainerState] = {
    "created": "starting",
    "starting": "starting",
    "started": "running",
    "stopping": "running",
    "stopped": "exited",
    "suspended": "exited",
    "destroying": "exited",
    "destroyed": "exited",
    "failed": "exited",
}


class FlyRuntime:
    """Runs the agent on Fly Machines in `app`, from `image`."""

    name = "fly"

    def __init__(
        self,
        app: str,
        image: str,
        token: str,
        *,
        api_url: str = "https://api.machines.dev",
        logs_url: str = "https://api.fly.io",
        region: str | None = None,
        cpu_kind: str = "shared",
        cpus: int = 1,
        memory_mb: int = 512,
        restart_retries: int = 3,
        start_timeout: float = 60.0,
        attempts: int = 5,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for name, value in (("app", app), ("image", image), ("token", token)):
            if not value:
                raise RuntimeFailure(f"the fly runtime needs {name} (VELOCITY_FLY_"
                                     f"{'API_TOKEN' if name == 'token' else name.upper()})",
                                     setting=name)
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.app = app
        self.image = image
        self.region = region
        self.guest = {"cpu_kind": cpu_kind, "cpus": cpus, "memory_mb": memory_mb}
        self.restart_retries = restart_retries
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {token}"}
        self._machines = httpx.Client(base_url=f"{api_url.rstrip('/')}/v1/apps/{app}",
                                      headers=headers, timeout=httpx.Timeout(30.0, read=90.0))
        self._platform = httpx.Client(base_url=f"{logs_url.rstrip('/')}/api/v1/apps/{app}",
                                      headers=headers, timeout=30.0)

    def start(self, spec: ContainerSpec) -> ContainerInfo:
        spec = ContainerSpec.model_validate(spec.model_dump())  # its env dict may have changed
        cmd = ["--port", str(AGENT_PORT), "--health-port", str(HEALTH_PORT)]
        if spec.dev_command is not None:
            cmd += ["--dev-command", spec.dev_command]
        body: dict[str, Any] = {
            "name": f"velocity-{spec.session_id[:8]}-{secrets.token_hex(3)}",
            "config": {
                "image": self.image,
                "env": dict(spec.env),
                "init": {"cmd": cmd},
                "guest": self.guest,
                "restart": {"policy": "on-failure", "max_retries": self.restart_retries},
                "auto_destroy": True,
                "metadata": spec.container_labels(),
            },
        }
        if self.region:
            body["region"] = self.region
        machine = self._call("POST", "/machines", json=body, what="create a machine")
        machine_id = str(machine["id"])
        try:
            self._call("GET", f"/machines/{machine_id}/wait", machine_id=machine_id,
                       params={"state": "started", "instance_id": machine.get("instance_id"),
                               "timeout": int(self.start_timeout)},
                       what=f"wait for machine {machine_id} to start")
        except RuntimeFailure as failure:
            try:
                self._destroy(machine_id)
            except RuntimeFailure:
                pass  # cleanup's orphan sweep finds it by its metadata
            raise RuntimeFailure(f"machine {machine_id} of session {spec.session_id} did not "
                                 f"start: {failure.message}", container_id=machine_id,
                                 session_id=spec.session_id) from failure
        return self.status(machine_id)

    def stop(self, container_id: str, timeout: float = 10.0, *, remove: bool = False) -> None:
        try:
            self._call("POST", f"/machines/{container_id}/stop", machine_id=container_id,
                       json={"signal": "SIGTERM", "timeout": f"{max(1, int(timeout))}s"},
                       what=f"stop machine {container_id}")
        except ContainerNotFound:
            return
        if remove:
            self.remove(container_id)

    def remove(self, container_id: str) -> None:
        try:
            self._destroy(container_id)
        except ContainerNotFound:
            pass

    def status(self, container_id: str) -> ContainerInfo:
        machine = self._call("GET", f"/machines/{container_id}", machine_id=container_id,
                             what=f"read machine {container_id}")
        return self._info(machine)

    def logs(self, container_id: str, tail: int | None = None) -> str:
        """The lines Fly's log API still holds for this machine (its recent past only)."""
        reply = self._call("GET", "/logs", client=self._platform,
                           params={"instance": container_id}, what=f"read logs of {container_id}")
        lines = [str(entry.get("attributes", {}).get("message", ""))
                 for entry in reply.get("data", [])]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        return "".join(f"{line}\n" for line in lines)

    def list(self, labels: dict[str, str] | None = None) -> builtins.list[ContainerInfo]:
        wanted = labels or {}
        params = {f"metadata.{key}": value for key, value in wanted.items()}
        machines = self._call("GET", "/machines", params=params, what="list machines")
        found = [self._info(machine) for machine in machines
                 if machine.get("state") not in ("destroying", "destroyed")]
        return [info for info in found  # also filtered here: the metadata filter is a hint
                if all(info.labels.get(key) == value for key, value in wanted.items())]

    def close(self) -> None:
        self._machines.close()
        self._platform.close()

    def _destroy(self, machine_id: str) -> None:
        self._call("DELETE", f"/machines/{machine_id}", machine_id=machine_id,
                   params={"force": "true"}, what=f"destroy machine {machine_id}")

    def _info(self, machine: dict[str, Any]) -> ContainerInfo:
        machine_id = str(machine["id"])
        config = machine.get("config") or {}
        host = f"{machine_id}.vm.{self.app}.internal"
        return ContainerInfo(
            container_id=machine_id,
            runtime=self.name,
            url=f"http://{host}:{AGENT_PORT}",
            health_url=f"http://{host}:{HEALTH_PORT}/healthz",
            labels={str(k): str(v) for k, v in (config.get("metadata") or {}).items()},
            state=STATES.get(str(machine.get("state")), "unknown"),
            exit_code=_exit_code(machine),
            started_at=_timestamp(machine.get("created_at")),
        )

    def _call(self, method: str, path: str, *, what: str, machine_id: str | None = None,
              client: httpx.Client | None = None, **request: Any) -> Any:
        """One API call, retried on 429, 5xx and transport errors; its JSON body."""
        client = client or self._machines
        if "params" in request:
            request["params"] = {k: v for k, v in request["params"].items() if v is not None}
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = client.request(method, path, **request)
            except httpx.TransportError as error:
                last = f"{type(error).__name__}: {error}"
                retry_after = None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else {}
                message = _error_message(response)
                if response.status_code == 404 and machine_id is not None:
                    raise ContainerNotFound(f"no Fly machine {machine_id!r} in app {self.app}: "
                                            f"{message}", container_id=machine_id,
                                            runtime=self.name)
                if response.status_code not in RETRY_STATUSES:
                    raise RuntimeFailure(f"Fly Machines API could not {what}: HTTP "
                                         f"{response.status_code}: {message}",
                                         status=response.status_code, app=self.app)
                last = f"HTTP {response.status_code}: {message}"
                retry_after = _retry_after(response)
            if attempt < self.attempts:
                delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
                self._sleep(max(delay, retry_after or 0.0))
        raise RuntimeFailure(f"Fly Machines API could not {what} after {self.attempts} tries; "
                             f"last: {last}", app=self.app, attempts=self.attempts)


def _error_message(response: httpx.Response) -> str:
    """Fly's `{"error": "..."}` body, else the start of whatever came back."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(30.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _exit_code(machine: dict[str, Any]) -> int | None:
    """The exit code of the machine's latest `exit` event, if it has ended."""
    if machine.get("state") == "started":
        return None
    exits = [event for event in machine.get("events") or [] if event.get("type") == "exit"]
    if not exits:
        return None
    latest = max(exits, key=lambda event: event.get("timestamp") or 0)
    code = ((latest.get("request") or {}).get("exit_event") or {}).get("exit_code")
    return int(code) if code is not None else None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
