"""The agent's configuration: the container's environment, read once into a frozen dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent.backoff import (
    DOWNLOAD_BACKOFF,
    RECONNECT_BACKOFF,
    RESTART_BACKOFF,
    BackoffPolicy,
)
from agent.snapshot import InvalidSnapshotRef, SnapshotRef, parse_snapshot_url

EXIT_CONFIG = 2
REQUIRED = ("PROJECT_ID", "SESSION_ID", "SNAPSHOT_URL", "REALTIME_URL", "REALTIME_TOKEN")
DEFAULT_PORT = 5173
DEFAULT_PROJECT_DIR = "./project"
GiB = 1024**3


class ConfigError(Exception):
    """One environment variable is missing or invalid; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs. The first fields come from the environment; the rest are
    tunables with production defaults that tests shorten (`dataclasses.replace`)."""

    project_id: str
    session_id: str
    snapshot: SnapshotRef
    realtime_url: str
    realtime_token: str = field(repr=False)
    project_dir: Path
    dev_command: str | None = None
    port: int = DEFAULT_PORT
    health_port: int = DEFAULT_PORT + 1

    max_snapshot_bytes: int = 2 * GiB
    download_attempts: int = 6
    download_backoff: BackoffPolicy = DOWNLOAD_BACKOFF
    rehydrate_attempts: int = 5
    reconnect_backoff: BackoffPolicy = RECONNECT_BACKOFF
    restart_backoff: BackoffPolicy = RESTART_BACKOFF
    restart_reset_after: float = 30.0
    heartbeat_interval: float = 25.0
    status_interval: float = 5.0
    push_timeout: float = 15.0
    stop_timeout: float = 5.0
    max_event_bytes: int = 64 * 1024**2

    @property
    def topic(self) -> str:
        return f"realtime:project:{self.project_id}"


def load_config(environ: Mapping[str, str], cwd: Path | None = None) -> AgentConfig:
    """Read and check the environment; raise ConfigError naming the first bad variable."""
    values = {name: _required(environ, name) for name in REQUIRED}
    for name in ("PROJECT_ID", "SESSION_ID"):
        if any(char.isspace() or ord(char) < 0x20 for char in values[name]):
            raise ConfigError(name, "must not contain whitespace or control characters")
    try:
        snapshot = parse_snapshot_url(values["SNAPSHOT_URL"])
    except InvalidSnapshotRef as error:
        raise ConfigError("SNAPSHOT_URL", str(error)) from None
    port = _port(environ, "PORT", DEFAULT_PORT)
    health_default = port + 1 if port else 0
    health_port = _port(environ, "HEALTH_PORT", health_default)
    if port and port == health_port:
        raise ConfigError("HEALTH_PORT", f"must differ from PORT ({port})")
    return AgentConfig(
        project_id=values["PROJECT_ID"],
        session_id=values["SESSION_ID"],
        snapshot=snapshot,
        realtime_url=_realtime_url(values["REALTIME_URL"]),
        realtime_token=values["REALTIME_TOKEN"],
        project_dir=_project_dir(environ, cwd or Path.cwd()),
        dev_command=environ.get("DEV_COMMAND", "").strip() or None,
        port=port,
        health_port=health_port,
    )


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(name, "is required and was not set (or is empty)")
    return value


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        if not 0 <= default <= 65535:
            raise ConfigError(name, f"default {default} is not a valid port; set it explicitly")
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError(name, f"must be a port number 0-65535 (0: any free port), got {raw!r}")
    return int(raw)


def _realtime_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc or parts.fragment:
        raise ConfigError("REALTIME_URL", "must be a ws:// or wss:// URL without a fragment")
    return value


def _project_dir(environ: Mapping[str, str], cwd: Path) -> Path:
    raw = environ.get("PROJECT_DIR", "").strip() or DEFAULT_PROJECT_DIR
    if "\x00" in raw:
        raise ConfigError("PROJECT_DIR", "contains NUL")
    path = (cwd / raw).resolve()
    if path.parent == path:
        raise ConfigError("PROJECT_DIR", "must not be the filesystem root")
    return path
