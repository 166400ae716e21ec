"""The embedded stack on one machine: a private PostgreSQL, migrations, a Prefect server on
that PostgreSQL (SQLite locks up under load), and the service. `velocity up` and
`velocity demo` run it; DATABASE_URL and PREFECT_API_URL point it at existing engines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict

from velocity.db import database_url, embedded_cluster, migrate
from velocity.settings import Settings, get_settings

PREFECT_DATABASE = "prefect"
PREFECT_START_TIMEOUT = 120.0


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_for_address(host: str, port: int) -> Settings:
    """Settings for a service on host:port. VELOCITY_PUBLIC_URL defaults to that address and
    goes into the environment, so flows run in this process (which read the environment)
    hand containers the same gateway and download URLs as the API."""
    if not os.environ.get("VELOCITY_PUBLIC_URL"):
        os.environ["VELOCITY_PUBLIC_URL"] = f"http://{host}:{port}"
    get_settings.cache_clear()
    return get_settings()


def flush_prefect_logs() -> None:
    """Send the flow-run logs Prefect still holds in its batch while the server is up;
    otherwise they are flushed at exit, to a server already gone."""
    if "prefect" not in sys.modules:
        return
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


@dataclass
class PrefectServer:
    """A `prefect server start` subprocess and where it answers."""

    process: subprocess.Popen[bytes] | None
    api_url: str
    log: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class EmbeddedStack:
    settings: Settings
    database_url: str = ""
    prefect: PrefectServer | None = None
    started_cluster: bool = False
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_database(self) -> str:
        if not self.settings.database_url:
            embedded_cluster(self.settings).start()
            self.started_cluster = True
        self.database_url = database_url(self.settings)
        migrate(self.database_url)
        return self.database_url

    def start_prefect(self) -> PrefectServer:
        """Use PREFECT_API_URL when set; else run a Prefect server on our PostgreSQL."""
        existing = os.environ.get("PREFECT_API_URL")
        if existing:
            self.prefect = PrefectServer(None, existing.rstrip("/"))
            return self.prefect
        port = free_port()
        home = (self.settings.home / "prefect").resolve()
        home.mkdir(parents=True, exist_ok=True)
        log = home / "server.log"
        env = {**os.environ, "PREFECT_HOME": str(home),
               "PREFECT_API_DATABASE_CONNECTION_URL": self._prefect_database_url(),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.prefect = PrefectServer(process, f"http://127.0.0.1:{port}/api", log)
        self._wait_for_prefect(self.prefect)
        os.environ["PREFECT_API_URL"] = self.prefect.api_url
        return self.prefect

    def _prefect_database_url(self) -> str:
        """A `prefect` database beside ours, as an asyncpg URL."""
        params = conninfo_to_dict(self.database_url)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (PREFECT_DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PREFECT_DATABASE}"')
        user = quote(str(params.get("user", "postgres")), safe="")
        password = quote(str(params.get("password", "")), safe="")
        host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
        return f"postgresql+asyncpg://{user}:{password}@{host}:{port}/{PREFECT_DATABASE}"

    def _wait_for_prefect(self, server: PrefectServer) -> None:
        deadline = time.monotonic() + PREFECT_START_TIMEOUT
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                raise StackError(f"the Prefect server exited; see {server.log}")
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling a starting server, with a deadline
        raise StackError(f"the Prefect server did not answer in {PREFECT_START_TIMEOUT:.0f} s; "
                         f"see {server.log}")

    def start_flow_serving(self) -> subprocess.Popen[bytes]:
        """`python -m deployments.serve`: every flow's deployment (the cleanup schedule)."""
        log = (self.settings.home / "serve.log").resolve()
        process = subprocess.Popen([sys.executable, "-m", "deployments.serve"],
                                   env=dict(os.environ), stdout=log.open("w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self._children.append(process)
        return process

    def stop(self) -> None:
        flush_prefect_logs()
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.prefect is not None:
            self.prefect.stop()
        if self.started_cluster:
            embedded_cluster(self.settings).stop()
