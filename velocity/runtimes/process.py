"""The embedded runtime: each container is a local process group with its own directory.

A container is `{root}/{container_id}/`: `container.json` (who runs, where, since when),
`agent.log` (stdout and stderr), `exit.json` (how it ended), `project/` (PROJECT_DIR) and the
agent's HOME. Its leader is `process_init.py`, which runs the agent, records its exit code and
ends the group when the agent ends, so every answer here comes from the disk and /proc and
holds after the orchestrator that started the container has restarted.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pydantic import BaseModel, ValidationError

from velocity.runtimes.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    RuntimeFailure,
)
from velocity.runtimes.process_init import EXIT_FILE, exit_code_of, record_exit

EPHEMERAL_PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"

INIT_SCRIPT = Path(__file__).with_name("process_init.py")
RECORD_FILE = "container.json"
LOG_FILE = "agent.log"
CONTAINER_ID = re.compile(r"proc-[0-9a-f]{12}")
KILL_GRACE_SECONDS = 5.0
HAS_PROC = Path("/proc/self/stat").exists()


class ProcessRecord(BaseModel):
    """container.json: what start knew, all that later calls need."""

    container_id: str
    pid: int
    pgid: int
    start_ticks: int | None  # /proc/<pid>/stat starttime: tells our pid from a reused one
    labels: dict[str, str]
    port: int
    health_port: int
    started_at: datetime
    command: list[str]
    project_dir: str


class ExitRecord(BaseModel):
    exit_code: int | None
    finished_at: datetime


class ProcStat(NamedTuple):
    state: str
    pgrp: int
    start_ticks: int


class ProcessRuntime:
    """Runs the agent as a local subprocess: the embedded default, used by tests and the demo.

    The environment is the spec's five variables plus PATH, HOME, LANG, PROJECT_DIR, PORT,
    HEALTH_PORT and DEV_COMMAND; nothing else of the orchestrator's reaches the agent.
    """

    name = "process"

    def __init__(self, root: Path, agent_command: builtins.list[str] | None = None) -> None:
        self.root = Path(root).resolve()  # PROJECT_DIR must not depend on the agent's cwd
        if agent_command is not None and not agent_command:
            raise ValueError("agent_command must name a program")
        default = [sys.executable, "-m", "agent"]
        self.agent_command = default if agent_command is None else list(agent_command)

    def start(self, spec: ContainerSpec) -> ContainerInfo:
        spec = ContainerSpec.model_validate(spec.model_dump())  # its env dict may have changed
        path = os.environ.get("PATH") or os.defpath
        if shutil.which(self.agent_command[0], path=path) is None:
            raise RuntimeFailure(
                f"cannot start the agent: {self.agent_command[0]!r} is not an executable on PATH",
                command=self.agent_command,
            )
        container_id = f"proc-{secrets.token_hex(6)}"
        container_dir = self.root / container_id
        project_dir = container_dir / "project"
        self.root.mkdir(parents=True, exist_ok=True)
        container_dir.mkdir(mode=0o700)
        project_dir.mkdir()
        port, health_port = free_loopback_ports(2)
        env = {
            **spec.env,
            "PATH": path,
            "HOME": str(container_dir),
            "LANG": utf8_lang(),
            "PROJECT_DIR": str(project_dir),
            "PORT": str(port),
            "HEALTH_PORT": str(health_port),
        }
        if spec.dev_command is not None:
            env["DEV_COMMAND"] = spec.dev_command
        try:
            pid = self._spawn(container_dir, env)
        except OSError as error:
            shutil.rmtree(container_dir, ignore_errors=True)
            raise RuntimeFailure(
                f"cannot start the agent of session {spec.session_id}: {error}",
                session_id=spec.session_id,
            ) from error
        stat = proc_stat(pid)
        record = ProcessRecord(
            container_id=container_id,
            pid=pid,
            pgid=pid,  # setsid: the init leads its own session and group
            start_ticks=stat.start_ticks if stat else None,
            labels=spec.container_labels(),
            port=port,
            health_port=health_port,
            started_at=datetime.now(UTC),
            command=self.agent_command,
            project_dir=str(project_dir),
        )
        try:
            write_atomically(container_dir / RECORD_FILE, record.model_dump_json(indent=2))
        except OSError as error:  # unrecorded, it could never be found again: end it now
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            shutil.rmtree(container_dir, ignore_errors=True)
            raise RuntimeFailure(f"cannot record container {container_id}: {error}") from error
        return self._info(record)

    def stop(self, container_id: str, timeout: float = 10.0, *, remove: bool = False) -> None:
        try:
            record = self._record(container_id)
        except ContainerNotFound:
            if remove and CONTAINER_ID.fullmatch(container_id):
                shutil.rmtree(self.root / container_id, ignore_errors=True)
            return
        killed = False
        self._signal_group(record, signal.SIGTERM)
        if not self._wait_until_gone(record, timeout):
            killed = True
            self._signal_group(record, signal.SIGKILL)
            if not self._wait_until_gone(record, KILL_GRACE_SECONDS):
                raise RuntimeFailure(
                    f"container {container_id} (process group {record.pgid}) is still alive "
                    f"{KILL_GRACE_SECONDS}s after SIGKILL",
                    container_id=container_id,
                )
        container_dir = self.root / container_id
        if not (container_dir / EXIT_FILE).exists():
            self._keep_exit(container_id, 128 + signal.SIGKILL if killed else None)
        if remove:
            shutil.rmtree(container_dir, ignore_errors=True)

    def remove(self, container_id: str) -> None:
        self.stop(container_id, remove=True)

    def status(self, container_id: str) -> ContainerInfo:
        return self._info(self._record(container_id))

    def logs(self, container_id: str, tail: int | None = None) -> str:
        container_dir = self._container_dir(container_id)
        try:
            with open(container_dir / LOG_FILE, "rb") as handle:
                data = handle.read() if tail is None else last_lines(handle, tail)
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")

    def list(self, labels: dict[str, str] | None = None) -> builtins.list[ContainerInfo]:
        wanted = labels or {}
        found: builtins.list[ContainerInfo] = []
        if not self.root.is_dir():
            return []
        for entry in self.root.iterdir():
            if not CONTAINER_ID.fullmatch(entry.name):
                continue
            try:
                info = self.status(entry.name)
            except ContainerNotFound:  # still starting, or removed meanwhile
                continue
            if all(info.labels.get(key) == value for key, value in wanted.items()):
                found.append(info)
        return sorted(found, key=lambda info: (info.started_at or datetime.min, info.container_id))

    def _container_dir(self, container_id: str) -> Path:
        container_dir = self.root / container_id
        if not CONTAINER_ID.fullmatch(container_id) or not container_dir.is_dir():
            raise ContainerNotFound(
                f"no process container {container_id!r} under {self.root}",
                container_id=container_id,
                runtime=self.name,
            )
        return container_dir

    def _record(self, container_id: str) -> ProcessRecord:
        path = self._container_dir(container_id) / RECORD_FILE
        try:
            return ProcessRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ContainerNotFound(
                f"process container {container_id!r} has no {RECORD_FILE}",
                container_id=container_id,
                runtime=self.name,
            ) from None
        except ValidationError as error:
            raise RuntimeFailure(
                f"unreadable {path}: {error}", container_id=container_id
            ) from error

    def _exit(self, record: ProcessRecord) -> ExitRecord | None:
        path = self.root / record.container_id / EXIT_FILE
        try:
            return ExitRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def _info(self, record: ProcessRecord) -> ContainerInfo:
        state: ContainerState
        exit_code: int | None
        if leader_alive(record):
            state, exit_code = "running", None
        else:
            # Reaped after the check, not before: an init that exits in between would be
            # reported exited and left a zombie.
            self._reap(record)
            if group_alive(record):
                state, exit_code = "unknown", None  # the init is gone, part of its group is not
            else:
                ended = self._exit(record)
                state, exit_code = "exited", ended.exit_code if ended else None
        return ContainerInfo(
            container_id=record.container_id,
            runtime=self.name,
            url=f"http://127.0.0.1:{record.port}",
            health_url=f"http://127.0.0.1:{record.health_port}/healthz",
            labels=record.labels,
            state=state,
            exit_code=exit_code,
            started_at=record.started_at,
        )

    def _spawn(self, container_dir: Path, env: dict[str, str]) -> int:
        """Start the init as leader of a new session, stdout and stderr appended to the log."""
        log_flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        argv = [
            sys.executable,
            "-I",
            "-S",
            str(INIT_SCRIPT),
            str(container_dir),
            "--",
            *self.agent_command,
        ]
        return os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(container_dir / LOG_FILE), log_flags, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP},
        )

    def _reap(self, record: ProcessRecord) -> None:
        """Collect the init if it is our exited child, keeping its exit code if it left none."""
        stat = proc_stat(record.pid)
        if HAS_PROC and (stat is None or stat.start_ticks != record.start_ticks):
            return  # not our process any more: its pid may be another child's now
        try:
            pid, status = os.waitpid(record.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            self._keep_exit(record.container_id, exit_code_of(os.waitstatus_to_exitcode(status)))

    def _keep_exit(self, container_id: str, exit_code: int | None) -> None:
        """Record how the container ended, unless a concurrent stop(remove=True) is deleting
        its directory: then there is nothing left to record it in, and nobody to read it."""
        with contextlib.suppress(FileNotFoundError):
            record_exit(str(self.root / container_id), exit_code)

    def _signal_group(self, record: ProcessRecord, signum: int) -> None:
        if group_alive(record):
            try:
                os.killpg(record.pgid, signum)
            except ProcessLookupError:
                pass

    def _wait_until_gone(self, record: ProcessRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._reap(record)
            if not group_alive(record):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def proc_stat(pid: int) -> ProcStat | None:
    """State, process group and start time of a process, or None if there is none (or no /proc)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcStat(fields[0].decode(), int(fields[2]), int(fields[19]))


def leader_alive(record: ProcessRecord) -> bool:
    """Whether the container's init runs: the same pid and the same start time, not a zombie."""
    if not HAS_PROC:
        try:
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return False
        return True
    stat = proc_stat(record.pid)
    return stat is not None and stat.state not in "ZX" and stat.start_ticks == record.start_ticks


def group_alive(record: ProcessRecord) -> bool:
    """Whether a live process of the container's group remains, leader or not.

    A group's number stays taken while any member lives, so while our leader exists (even as a
    zombie) the group is ours; once it is gone, a member counts only if its environment names
    our PROJECT_DIR, so that a group number reused by a stranger is never signalled.
    """
    if not HAS_PROC:
        try:
            os.killpg(record.pgid, 0)
        except ProcessLookupError:
            return False
        return True
    leader = proc_stat(record.pid)
    if leader is not None and leader.start_ticks != record.start_ticks:
        return False
    members = [
        pid for pid, stat in processes() if stat.pgrp == record.pgid and stat.state not in "ZX"
    ]
    if not members:
        return False
    if leader is not None:
        return True
    marker = f"PROJECT_DIR={record.project_dir}".encode()
    return any(marker in environment_of(pid) for pid in members)


def processes() -> Iterator[tuple[int, ProcStat]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                yield int(entry.name), stat


def environment_of(pid: int) -> builtins.list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def free_loopback_ports(count: int) -> builtins.list[int]:
    """Ports free on 127.0.0.1 now, all different, chosen below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one: between this probe and the agent binding it, any
    outgoing connection on the host may be given it (a hundred agents and their gateway make
    plenty), and the agent then fails with "address already in use". Ports below the range
    are never handed out by the kernel, only taken by whoever binds them.
    """
    low, high = _assignable_port_range()
    if high - low < 100 * count:  # the ephemeral range starts too low to leave room
        return _ephemeral_ports(count)
    chosen: builtins.list[int] = []
    for _ in range(1000):
        port = secrets.randbelow(high - low) + low
        if port not in chosen and _is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free loopback ports found in {low}..{high - 1}")


def _assignable_port_range() -> tuple[int, int]:
    """[low, high): from 10000 up to where the ephemeral range starts (Linux reads it from
    /proc; elsewhere 32768, the Linux default, is assumed)."""
    try:
        ephemeral_start = int(Path(EPHEMERAL_PORT_RANGE_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768
    return 10000, ephemeral_start


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_ports(count: int) -> builtins.list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def utf8_lang() -> str:
    """The orchestrator's LANG, or C.UTF-8 where it has none (or the C locale)."""
    lang = os.environ.get("LANG", "")
    return lang if lang not in ("", "C", "POSIX") else "C.UTF-8"


def last_lines(handle: BinaryIO, count: int) -> bytes:
    """The last `count` lines of a file, read back from its end rather than whole."""
    if count <= 0:
        return b""
    position = handle.seek(0, os.SEEK_END)
    data = b""
    while position > 0 and data.count(b"\n") <= count:
        step = min(65536, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    return b"".join(data.splitlines(keepends=True)[-count:])


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
