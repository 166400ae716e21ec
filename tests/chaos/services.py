"""The chaos suite's own services, each of which it may kill: a private PostgreSQL cluster
(durable settings, so a crash loses no committed write) and `velocity serve` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from velocity.cluster import LocalCluster
from velocity.settings import Settings

from ..helpers import wait_for


class ChaosPostgres:
    """A LocalCluster that can be stopped (`fast`, or `immediate`: a crash) and started again
    on the same port, which `LocalCluster.start` does not promise while old sockets linger."""

    def __init__(self, root: Path) -> None:
        self.cluster = LocalCluster(root)  # fsync and synchronous_commit stay on
        self.root = root
        self.running = False

    def start(self) -> None:
        if self.cluster.state() is None:
            self.cluster.start()
        else:
            state = self.cluster.state()
            assert state is not None
            options = (f"-p {state.port} -c listen_addresses=127.0.0.1"
                       f" -c unix_socket_directories={self.cluster.root}")
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.cluster.log_file),
                         "-o", options)
        self.running = True

    def stop(self, mode: str) -> None:
        """Stop the server: `fast` (clients are disconnected) or `immediate` (a crash: the
        next start replays the WAL)."""
        self._pg_ctl("stop", "-w", "-m", mode)
        self.running = False

    def url(self, database: str) -> str:
        return self.cluster.url(database)

    def destroy(self) -> None:
        self.cluster.destroy()

    def _pg_ctl(self, *arguments: str) -> None:
        state = self.cluster.state()
        assert state is not None
        command = [str(Path(state.bin_dir) / "pg_ctl"), *arguments, "-D",
                   str(self.cluster.data_dir)]
        if os.geteuid() == 0:  # PostgreSQL refuses root; the cluster belongs to `postgres`
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {arguments[0]} failed: {result.stderr or result.stdout}")


class ServiceProcess:
    """`python -m orchestrator serve` on a fixed port; `kill()` is SIGKILL, no goodbye."""

    def __init__(self, settings: Settings, port: int, log_path: Path) -> None:
        self.settings = settings
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        settings.generated_secrets  # noqa: B018 - secrets.json exists before the service reads it

    def start(self) -> None:
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("VELOCITY_")}
        environment.update({
            "VELOCITY_DATABASE_URL": str(self.settings.database_url),
            "VELOCITY_HOME": str(self.settings.home),
            "VELOCITY_STORAGE": self.settings.storage_url(),
            "VELOCITY_PUBLIC_URL": self.settings.public_url})
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "serve", "--port", str(self.port)],
                env=environment, stdout=log, stderr=log, start_new_session=True)
        wait_for(self._listening, timeout=60, interval=0.05, message="the service to listen")

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the service exited ({self.process.returncode}):\n{tail}")
        try:
            reply = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and bool(reply.json().get("listening"))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None
