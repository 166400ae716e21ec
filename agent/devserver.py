"""The preview's dev server: DEV_COMMAND, the project's npm `dev` script, or the built-in
static site; external ones are supervised (restarted with backoff, stopped as a group)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.backoff import RESTART_BACKOFF, Backoff, BackoffPolicy
from agent.health import DevServerState
from agent.staticserver import LiveReload, StaticSite

# Consecutive quick exits after which the state reads `failed` (it keeps retrying).
FAILED_AFTER = 5
READY_POLL_SECONDS = 0.1
# What the dev server's own environment never gets: it runs the project's code.
WITHHELD_ENV = ("REALTIME_TOKEN", "SNAPSHOT_URL")

StateListener = Callable[[DevServerState], None]
Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class DevServer(Protocol):
    """What the agent needs of any preview server."""

    @property
    def state(self) -> DevServerState: ...

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def restart(self) -> None:
        """After a re-hydration swapped PROJECT_DIR under it."""
        ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class LaunchPlan:
    """The command to supervise, and an install step to run first when `needs` is missing."""

    command: tuple[str, ...]
    install: tuple[str, ...] | None = None
    needs: str | None = None


def launch_plan(project_dir: Path, dev_command: str | None, port: int) -> LaunchPlan | None:
    """DEV_COMMAND; else npm's `dev` script when npm is installed; else None (static site)."""
    if dev_command:
        return LaunchPlan(("/bin/sh", "-c", dev_command))
    if _has_dev_script(project_dir / "package.json") and shutil.which("npm"):
        return LaunchPlan(
            ("npm", "run", "dev", "--", "--port", str(port), "--host", "127.0.0.1"),
            install=("npm", "install"),
            needs="node_modules",
        )
    return None


def _has_dev_script(package_json: Path) -> bool:
    try:
        scripts = json.loads(package_json.read_text()).get("scripts")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(scripts, dict) and isinstance(scripts.get("dev"), str)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StaticDevServer:
    """The built-in static site as a DevServer: running once bound, nothing to restart."""

    def __init__(
        self, root: Path, port: int, live_reload: LiveReload, on_state: StateListener, log: Log
    ) -> None:
        self._root, self._port, self._live_reload = root, port, live_reload
        self._on_state, self._log = on_state, log
        self._site: StaticSite | None = None
        self._state: DevServerState = "stopped"

    @property
    def state(self) -> DevServerState:
        return self._state

    @property
    def port(self) -> int:
        return self._site.port if self._site is not None else self._port

    async def start(self) -> None:
        self._set_state("starting")
        try:
            self._site = StaticSite(self._root, self._port, self._live_reload)
        except OSError as error:
            self._log.error("static server cannot listen on port %d: %s", self._port, error)
            self._set_state("failed")
            return
        self._site.start()
        self._log.info("static server listening on 127.0.0.1:%d", self._site.port)
        self._set_state("running")

    async def restart(self) -> None:
        """Each request resolves PROJECT_DIR afresh: the swapped tree is served as is."""

    async def stop(self) -> None:
        if self._site is not None:
            await asyncio.to_thread(self._site.stop)
            self._site = None
        self._set_state("stopped")

    def _set_state(self, state: DevServerState) -> None:
        if state != self._state:
            self._state = state
            self._on_state(state)


class ProcessDevServer:
    """Runs a LaunchPlan in its own process group under PROJECT_DIR and keeps it running.

    An exit is followed by a restart after a backoff that doubles from `policy.initial` to
    `policy.maximum`, reset once a run lasted `reset_after` seconds. The state is `starting`
    until the port accepts connections, then `running`; `restarting` (or `failed`, after
    FAILED_AFTER quick exits in a row) while waiting to start again.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        cwd: Path,
        port: int,
        on_state: StateListener,
        log: Log,
        policy: BackoffPolicy = RESTART_BACKOFF,
        reset_after: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.plan, self._cwd, self._port = plan, cwd, port
        self._on_state, self._log = on_state, log
        self._policy, self._reset_after, self._stop_timeout = policy, reset_after, stop_timeout
        self._state: DevServerState = "stopped"
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._restart_now = False
        self.restarts = 0

    @property
    def state(self) -> DevServerState:
        return self._state

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The running process group's id (its leader's pid), if any."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._supervise(), name="dev-server")

    async def restart(self) -> None:
        """Stop the current run and start again at once (no backoff, not a failure)."""
        if self._task is None:
            return
        self._restart_now = True
        self._wake.set()
        process = self._process
        if process is not None:
            await self._end_group(process)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        process = self._process
        if process is not None:
            await self._end_group(process)
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, self._stop_timeout + 1)
            except TimeoutError:
                pass
        self._set_state("stopped")

    async def _supervise(self) -> None:
        backoff, quick_exits = Backoff(self._policy), 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._set_state("starting")
            started = loop.time()
            code = await self._run_once()
            if self._stopping:
                break
            if self._restart_now:
                self._restart_now = False
                self._log.info("dev server restarting after re-hydration")
                continue
            if loop.time() - started >= self._reset_after:
                backoff.reset()
                quick_exits = 0
            quick_exits += 1
            self.restarts += 1
            delay = backoff.next()
            self._set_state("failed" if quick_exits >= FAILED_AFTER else "restarting")
            self._log.warning(
                "dev server exited with %s; restart %d in %.2fs", code, self.restarts, delay
            )
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set (gh-86296).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._restart_now = False

    async def _run_once(self) -> int | None:
        plan = self.plan
        if plan.install and plan.needs and not (self._cwd / plan.needs).exists():
            self._log.info("dev server: running %s", " ".join(plan.install))
            code = await self._run(plan.install, announce=False)
            if code != 0 or self._stopping or self._restart_now:
                return code
        return await self._run(plan.command, announce=True)

    async def _run(self, argv: tuple[str, ...], announce: bool) -> int | None:
        env = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}
        env["PORT"] = str(self._port)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self._cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            self._log.error("dev server cannot start %r: %s", argv[0], error)
            return None
        self._process = process
        watcher = asyncio.create_task(self._announce_listening(process)) if announce else None
        try:
            return await process.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._end_group(process)
            self._process = None

    async def _announce_listening(self, process: asyncio.subprocess.Process) -> None:
        while process.returncode is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                await asyncio.sleep(READY_POLL_SECONDS)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._log.info("dev server listening on 127.0.0.1:%d (pid %d)", self._port, process.pid)
            self._set_state("running")
            return

    async def _end_group(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the whole group, SIGKILL what is left after `stop_timeout`."""
        group = process.pid
        if not _signal_group(group, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout
        while loop.time() < deadline:
            if process.returncode is not None and not _group_alive(group):
                return
            await asyncio.sleep(0.02)
        self._log.warning("dev server group %d ignored SIGTERM: killing it", group)
        _signal_group(group, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await process.wait()

    def _set_state(self, state: DevServerState) -> None:
        if state != self._state:
            self._state = state
            self._on_state(state)


def _signal_group(group: int, signum: int) -> bool:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _group_alive(group: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            return True
    return False


def choose_dev_server(
    project_dir: Path,
    dev_command: str | None,
    port: int,
    live_reload: LiveReload,
    on_state: StateListener,
    log: Log,
    policy: BackoffPolicy,
    reset_after: float,
    stop_timeout: float,
) -> DevServer:
    """The DevServer for this project (decided once, after the first hydration)."""
    plan = launch_plan(project_dir, dev_command, port or 1)
    if plan is None:
        return StaticDevServer(project_dir, port, live_reload, on_state, log)
    if port == 0:
        port = free_port()
        plan = launch_plan(project_dir, dev_command, port) or plan
    log.info("dev server: %s", "DEV_COMMAND" if dev_command else "npm run dev")
    return ProcessDevServer(
        plan, project_dir, port, on_state, log, policy, reset_after, stop_timeout
    )
