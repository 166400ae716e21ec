"""The dev-server supervisor with real processes: restarts with backoff, group stops."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from agent.backoff import BackoffPolicy
from agent.devserver import ProcessDevServer, free_port, launch_plan
from agent.health import DevServerState
from tests.test_agent_support import wait_until

LOG = logging.getLogger("test.devserver")
PYTHON = shlex.quote(sys.executable)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def supervisor(
    project: Path, command: str, states: list[DevServerState], port: int = 0, **options: object
) -> ProcessDevServer:
    port = port or free_port()
    plan = launch_plan(project, command, port)
    assert plan is not None
    return ProcessDevServer(plan, project, port, states.append, LOG, **options)  # type: ignore[arg-type]


async def test_a_command_that_exits_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    states: list[DevServerState] = []
    server = supervisor(
        tmp_path,
        f"{PYTHON} -c 'import time; print(time.monotonic())' >> {starts}; exit 3",
        states,
        policy=BackoffPolicy(initial=0.1, maximum=0.8, jitter=0.0),
    )
    await server.start()
    try:
        await wait_until(lambda: "failed" in states, timeout=15, message="five quick exits")
    finally:
        await server.stop()
    times = [float(value) for value in starts.read_text().split()]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # 0.1, 0.2, 0.4, 0.8…
    assert gaps[2] > 2 * gaps[0]
    assert server.restarts >= 5 and len(times) >= 5
    assert "restarting" in states and "running" not in states
    assert states[-1] == "stopped"


async def test_a_listening_server_runs_with_port_and_cwd_and_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALTIME_TOKEN", "must-not-leak")
    monkeypatch.setenv("SNAPSHOT_URL", "http://x/s.zip?signature=must-not-leak")
    states: list[DevServerState] = []
    command = (
        f'echo "$PORT $(pwd) ${{REALTIME_TOKEN:-none}} ${{SNAPSHOT_URL:-none}}" > seen; '
        f"exec {PYTHON} -m http.server $PORT --bind 127.0.0.1"
    )
    server = supervisor(tmp_path, command, states)
    await server.start()
    try:
        await wait_until(lambda: server.state == "running", message="running")
        port, cwd, token, url = (tmp_path / "seen").read_text().split()
        assert (int(port), cwd, token, url) == (server.port, str(tmp_path), "none", "none")
        assert states == ["starting", "running"]
    finally:
        await server.stop()
    assert server.state == "stopped" and server.restarts == 0


async def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    record = tmp_path / "pids"
    command = (
        f"sleep 300 & echo $! >> {record}; "
        f"sh -c 'sleep 300 & echo $! >> {record}; wait' & echo $! >> {record}; "
        f"echo $$ >> {record}; wait"
    )
    server = supervisor(tmp_path, command, [])
    await server.start()
    await wait_until(lambda: len(pids(record)) == 4, message="four processes")
    assert all(alive(pid) for pid in pids(record))
    await server.stop()
    assert not any(alive(pid) for pid in pids(record))
    assert server.restarts == 0  # a stop is not a crash


async def test_a_group_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    record = tmp_path / "pids"
    command = f"trap '' TERM; sleep 300 & echo $! >> {record}; echo $$ >> {record}; wait"
    server = supervisor(tmp_path, command, [], stop_timeout=0.3)
    await server.start()
    await wait_until(lambda: len(pids(record)) == 2, message="two processes")
    await server.stop()
    assert not any(alive(pid) for pid in pids(record))


async def test_restart_after_rehydration_starts_at_once_in_the_new_tree(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    record = tmp_path / "pids"
    server = supervisor(
        project,
        f"echo $$ >> {record}; exec sleep 300",
        [],
        policy=BackoffPolicy(initial=30.0, maximum=30.0),
    )
    await server.start()
    try:
        await wait_until(lambda: len(pids(record)) == 1, message="first run")
        first = pids(record)[0]
        os.rename(project, tmp_path / "old")  # what a hydration swap does to its cwd
        project.mkdir()
        await server.restart()
        await wait_until(lambda: len(pids(record)) == 2, timeout=5, message="prompt restart")
        assert not alive(first) and alive(pids(record)[1])
        assert Path(f"/proc/{pids(record)[1]}/cwd").resolve() == project
    finally:
        await server.stop()


def test_the_launch_plan_follows_dev_command_then_npm_then_static(tmp_path: Path) -> None:
    assert launch_plan(tmp_path, None, 5173) is None
    (tmp_path / "package.json").write_text(json.dumps({"scripts": {"build": "vite build"}}))
    assert launch_plan(tmp_path, None, 5173) is None
    (tmp_path / "package.json").write_text(json.dumps({"scripts": {"dev": "vite"}}))
    plan = launch_plan(tmp_path, None, 5173)
    if shutil.which("npm"):
        assert plan is not None
        assert plan.command == ("npm", "run", "dev", "--", "--port", "5173", "--host", "127.0.0.1")
        assert plan.install == ("npm", "install") and plan.needs == "node_modules"
    else:
        assert plan is None
    custom = launch_plan(tmp_path, "bun dev", 5173)
    assert custom is not None and custom.command == ("/bin/sh", "-c", "bun dev")
    (tmp_path / "package.json").write_text("not json")
    assert launch_plan(tmp_path, None, 5173) is None
