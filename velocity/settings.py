"""The one settings object, read from VELOCITY_* environment variables."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import secrets
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every secret the embedded stack generates when its setting is unset. Only ever append: a
# name added later is generated into an existing secrets.json without touching the others.
GENERATED_SECRET_NAMES = ("jwt_secret", "token_key", "storage_signing_secret", "service_key",
                          "webhook_secret")


class Settings(BaseSettings):
    """Configuration for every part of the platform except the container agent.

    Every field has an embedded default, so an empty environment runs the whole stack on
    one machine. Secrets left unset are generated once and kept in `{home}/secrets.json`.
    """

    model_config = SettingsConfigDict(env_prefix="VELOCITY_", extra="ignore")

    home: Path = Field(
        default=Path(".velocity"),
        description="State directory of the embedded stack (PostgreSQL cluster, local store).",
    )
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means the embedded cluster."
    )
    storage: str = Field(
        default="",
        description="Object store: local:///path or s3://bucket?endpoint=...; "
        "unset means a local directory under home.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL of the API as containers reach it (signed download links).",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret of Supabase-style user tokens."
    )
    token_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Container-token signing keys by kid, as JSON: {"k1": "secret", ...}.',
    )
    token_active_kid: str | None = Field(
        default=None, description="The kid that signs new container tokens."
    )
    storage_signing_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of the local store's signed URLs."
    )
    realtime_max_frame_bytes: int = Field(
        default=1024 * 1024, ge=4096,
        description="Largest websocket frame the gateway sends; larger events go in parts.")
    realtime_max_event_bytes: int = Field(
        default=64 * 1024 * 1024, ge=4096,
        description="Largest event the gateway sends at all; past it, clients re-hydrate.")
    realtime_send_queue: int = Field(
        default=2000, ge=16,
        description="Frames queued per connection before a slow consumer is disconnected.")
    realtime_idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="A socket silent this long (no heartbeat) is closed.")
    snapshot_url_ttl_seconds: int = Field(
        default=900, ge=30, description="Lifetime of signed snapshot and binary-file URLs.")
    docker_host: str | None = Field(
        default=None, description="Docker engine of the docker runtime, e.g. "
        "unix:///run/docker.sock; unset: DOCKER_HOST, else the engine's default socket.")
    docker_image: str | None = Field(
        default=None, description="Agent image of the docker runtime; unset: the one "
        "`velocity image build` builds from this checkout (velocity-agent:<content hash>).")
    docker_memory: str = Field(
        default="512m", pattern=r"^[0-9]+[bkmg]?$",
        description="Memory limit of a session container (no swap on top).")
    docker_cpus: float = Field(default=1.0, gt=0, le=64,
                               description="CPU limit of a session container, in CPUs.")
    docker_pids_limit: int = Field(default=256, ge=16,
                                   description="Process limit of a session container.")
    docker_tmp_size: str = Field(
        default="64m", pattern=r"^[0-9]+[kmg]?$",
        description="Size of a session container's /tmp tmpfs (its only writable path "
        "besides the project's workspace).")
    docker_workspace_root: Path | None = Field(
        default=None, description="Host directory under which each session container's "
        "workspace is bind-mounted (the engine must be on this machine); unset: an anonymous "
        "volume per container, removed with it.")
    fly_api_url: str = Field(default="https://api.machines.dev",
                             description="Base URL of the Fly Machines API.")
    fly_logs_url: str = Field(default="https://api.fly.io",
                              description="Base URL of Fly's platform API (machine logs).")
    fly_api_token: SecretStr | None = Field(
        default=None, description="Fly API token (a deploy token of fly_app suffices).")
    fly_app: str | None = Field(default=None,
                                description="Fly app whose machines run preview sessions.")
    fly_image: str | None = Field(
        default=None, description="Agent image of the fly runtime, pushed to a registry Fly "
        "can pull from (e.g. registry.fly.io/<app>:<tag>).")
    fly_region: str | None = Field(default=None,
                                   description="Region of new machines; unset: Fly chooses.")
    fly_cpu_kind: Literal["shared", "performance"] = Field(
        default="shared", description="Guest CPU kind of a session machine.")
    fly_cpus: int = Field(default=1, ge=1, le=16, description="Guest CPUs of a session machine.")
    fly_memory_mb: int = Field(default=512, ge=256,
                               description="Guest memory of a session machine, in MiB.")
    fly_restart_retries: int = Field(
        default=3, ge=0, description="Restarts of a machine whose agent failed, before Fly "
        "gives up (policy on-failure; an ended machine is destroyed).")
    service_key: SecretStr | None = Field(
        default=None, description="Key that lets trusted callers use the HTTP API as the "
        "service (the `apikey` header or a Bearer token equal to it).")
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 secret that signs webhook deliveries.")
    workflow_runner: Literal["local", "deployment"] = Field(
        default="local", description="How the API starts flows: `local` runs them in the API "
        "process; `deployment` submits them to their deployments for workers to pick up.")
    default_runtime: str = Field(
        default="process", description="Runtime of a preview session that names none.")
    dev_login: bool = Field(
        default=False, description="`POST /play/api/dev-login` mints a user token for any "
        "email, creating the user: for the embedded stack only. Allowed only when public_url "
        "is a loopback address, and answered only to loopback clients.")

    @model_validator(mode="after")
    def _dev_login_only_on_loopback(self) -> Settings:
        if self.dev_login and not is_loopback_url(self.public_url):
            raise ValueError(f"VELOCITY_DEV_LOGIN lets anyone sign in as anyone: it is allowed "
                             f"only on the embedded stack, whose VELOCITY_PUBLIC_URL is a "
                             f"loopback address, not {self.public_url!r}")
        return self

    @cached_property
    def generated_secrets(self) -> dict[str, str]:
        """Secrets generated on first use for the embedded stack, persisted with mode 0600.

        A secret already on disk is never changed. Missing ones are added under an exclusive
        lock and the file is replaced atomically, so processes starting together agree.
        """
        path = self.home / "secrets.json"
        if path.exists():
            values = dict(json.loads(path.read_text()))
            if all(name in values for name in GENERATED_SECRET_NAMES):
                return values
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "secrets.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            values = dict(json.loads(path.read_text())) if path.exists() else {}
            missing = [name for name in GENERATED_SECRET_NAMES if name not in values]
            if missing:
                values.update({name: secrets.token_urlsafe(32) for name in missing})
                staged = path.with_name(f".secrets.{os.getpid()}.tmp")
                fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    json.dump(values, handle)
                os.replace(staged, path)
        return values

    def user_jwt_secret(self) -> str:
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return self.generated_secrets["jwt_secret"]

    def container_token_keys(self) -> tuple[str, dict[str, str]]:
        """The active kid and every verification key by kid."""
        if self.token_keys:
            keys = {kid: key.get_secret_value() for kid, key in self.token_keys.items()}
            active = self.token_active_kid or next(iter(keys))
            if active not in keys:
                raise ValueError(f"VELOCITY_TOKEN_ACTIVE_KID={active!r} names no key in "
                                 "VELOCITY_TOKEN_KEYS")
            return active, keys
        return "embedded", {"embedded": self.generated_secrets["token_key"]}

    def storage_secret(self) -> str:
        if self.storage_signing_secret is not None:
            return self.storage_signing_secret.get_secret_value()
        return self.generated_secrets["storage_signing_secret"]

    def api_service_key(self) -> str:
        if self.service_key is not None:
            return self.service_key.get_secret_value()
        return self.generated_secrets["service_key"]

    def webhook_signing_secret(self) -> str:
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value()
        return self.generated_secrets["webhook_secret"]

    def realtime_url(self) -> str:
        """The gateway's websocket URL as containers reach it."""
        base = self.public_url.rstrip("/")
        scheme, _, rest = base.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/realtime/v1/websocket"

    def storage_url(self) -> str:
        return self.storage or f"local://{(self.home / 'storage').resolve()}"


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address) can only be reached from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
