"""A private PostgreSQL cluster for the embedded stack and the tests.

The cluster lives in one directory (data, socket, state file) and listens on a loopback port
with a generated password. Binaries come from PATH, then `/usr/lib/postgresql/*/bin`, then the
`pgserver` wheel. PostgreSQL refuses to run as root, so as root every server command runs as
the `postgres` system user on a data directory it owns.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

DATABASE_NAME = "velocity"
SUPERUSER = "postgres"
DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"  # where Debian's packages put each version

# Settings for a throwaway cluster: no durability, more speed. Never used for `velocity db`.
EPHEMERAL_SERVER_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped; the message says why."""


@dataclass(frozen=True)
class ClusterState:
    port: int
    password: str
    bin_dir: str

    def url(self, database: str = DATABASE_NAME) -> str:
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{database}"
        )


def find_bin_dir() -> Path:
    """Where initdb and pg_ctl are: PATH, the Debian layout, or the pgserver wheel."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        # Debian's wrappers on PATH resolve to the versioned directory; use the real one.
        real = Path(os.path.realpath(on_path)).parent
        if (real / "initdb").exists() and (real / "postgres").exists():
            return real
        versioned = _debian_bin_dirs()
        if versioned:
            return versioned[-1]
        return real
    versioned = _debian_bin_dirs()
    if versioned:
        return versioned[-1]
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError as error:
        raise ClusterError(
            "no PostgreSQL server binaries found: install PostgreSQL (initdb, pg_ctl) or "
            "`pip install pgserver`, or set VELOCITY_DATABASE_URL"
        ) from error
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _debian_bin_dirs() -> list[Path]:
    found = [Path(p) for p in glob.glob(DEBIAN_BIN_DIRS) if Path(p, "initdb").exists()]
    return sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalCluster:
    """One PostgreSQL cluster in `root`: `start`, `stop`, `status`, `url`."""

    def __init__(self, root: Path, *, ephemeral: bool = False) -> None:
        self.root = root.resolve()
        self.data_dir = self.root / "data"
        self.state_file = self.root / "cluster.json"
        self.log_file = self.root / "server.log"
        self.ephemeral = ephemeral

    # -- state -------------------------------------------------------------------------------
    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        return ClusterState(**json.loads(self.state_file.read_text()))

    def url(self, database: str = DATABASE_NAME) -> str:
        state = self.state()
        if state is None:
            raise ClusterError(f"no cluster in {self.root}: run `velocity db start` first")
        return state.url(database)

    def is_running(self) -> bool:
        state = self.state()
        if state is None or not self.data_dir.exists():
            return False
        pg_ctl = str(Path(state.bin_dir) / "pg_ctl")
        result = self._run([pg_ctl, "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ClusterState:
        """Create the cluster on first use, start it if stopped; return how to reach it."""
        state = self.state() or self._init()
        if not self.is_running():
            port = state.port if _port_is_free(state.port) else _free_port()
            state = ClusterState(port=port, password=state.password, bin_dir=state.bin_dir)
            self._write_state(state)
            options = [f"-p {port}", "-c listen_addresses=127.0.0.1",
                       f"-c unix_socket_directories={self.root}"]
            if self.ephemeral:
                options += [f"-c {option}" for option in EPHEMERAL_SERVER_OPTIONS]
            self._run([str(Path(state.bin_dir) / "pg_ctl"), "start", "-w", "-t", "60",
                       "-D", str(self.data_dir), "-l", str(self.log_file),
                       "-o", " ".join(options)])
            self._ensure_database(state)
        return state

    def stop(self) -> None:
        state = self.state()
        if state is None or not self.is_running():
            return
        self._run([str(Path(state.bin_dir) / "pg_ctl"), "stop", "-w", "-m", "fast",
                   "-D", str(self.data_dir)])

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- internals ---------------------------------------------------------------------------
    def _init(self) -> ClusterState:
        bin_dir = find_bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_reachable_by_server_user()
        password = secrets.token_urlsafe(24)
        pwfile = self.root / "pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        self._give_to_server_user(self.root)
        try:
            self._run([str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                       "-E", "UTF8", "--locale=C.UTF-8", "--auth=scram-sha-256",
                       f"--pwfile={pwfile}"])
        finally:
            pwfile.unlink(missing_ok=True)
        state = ClusterState(port=_free_port(), password=password, bin_dir=str(bin_dir))
        self._write_state(state)
        return state

    def _ensure_database(self, state: ClusterState) -> None:
        import psycopg

        with psycopg.connect(state.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def _write_state(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(state.__dict__))
        os.chmod(self.state_file, 0o600)

    def _server_user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _give_to_server_user(self, path: Path) -> None:
        user = self._server_user()
        if user is None:
            return
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        for child in path.rglob("*"):
            os.chown(child, entry.pw_uid, entry.pw_gid)

    def _check_reachable_by_server_user(self) -> None:
        if self._server_user() is None:
            return
        for parent in self.root.parents:
            if not os.stat(parent).st_mode & 0o001:
                raise ClusterError(
                    f"{parent} is not searchable by other users, so the `postgres` user cannot "
                    f"reach {self.root}; choose a directory under a world-searchable path"
                )

    def as_server_user(self, command: list[str]) -> list[str]:
        """`command` run as the user owning the cluster (PostgreSQL refuses root)."""
        user = self._server_user()
        return command if user is None else ["runuser", "-u", user, "--", *command]

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        command = self.as_server_user(command)
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and result.returncode != 0:
            log_tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ClusterError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log_tail}".strip()
            )
        return result


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
