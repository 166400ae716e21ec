"""SIGTERM stops `python -m agent` promptly with exit 0 whatever its peers are doing: a
gateway that refuses, hangs mid-handshake or rejects the upgrade, and a snapshot server
that refuses or hangs while the agent hydrates.

A hydrated agent whose gateway was unreachable once hung here for good: its dev server's
"stopped" report woke the status reporter just as the reporter was cancelled, and
`asyncio.wait_for` (Python 3.11) dropped that cancellation."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from agent.devserver import free_port
from tests.test_agent_support import build_zip, fragment, send_bytes, serving, wait_until

REPO = Path(__file__).resolve().parents[1]
STOP_DEADLINE = 10.0
START_DEADLINE = 20.0
INDEX = b"<body>shutdown</body>"


class AgentProcess:
    """`python -m agent` in a subprocess, its log (stderr) collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._collect())

    @classmethod
    async def start(cls, cwd: Path, snapshot_url: str, realtime_url: str) -> AgentProcess:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "PROJECT_ID": str(uuid.uuid4()),
            "SESSION_ID": str(uuid.uuid4()),
            "SNAPSHOT_URL": snapshot_url,
            "REALTIME_URL": realtime_url,
            "REALTIME_TOKEN": "container-token",
            "PORT": "0",  # the static site and /healthz on free ports
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def _collect(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace"))

    async def wait_until_logged(self, text: str) -> None:
        await wait_until(
            lambda: self.logged(text) or self.process.returncode is not None,
            timeout=START_DEADLINE,
            message=f"the agent to log {text!r}",
        )
        assert self.logged(text), f"the agent exited before logging {text!r}:\n{self.log}"

    async def terminate(self) -> int:
        """SIGTERM; the exit code, failing if the agent is still running after the deadline."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)
        except TimeoutError:
            raise AssertionError(
                f"the agent did not exit within {STOP_DEADLINE}s of SIGTERM:\n{self.log}"
            ) from None
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._reader


@asynccontextmanager
async def running_agent(
    cwd: Path, snapshot_url: str, realtime_url: str
) -> AsyncIterator[AgentProcess]:
    agent = await AgentProcess.start(cwd, snapshot_url, realtime_url)
    try:
        yield agent
    finally:
        await agent.kill()


class SilentListener:
    """A TCP listener on loopback that accepts and never answers: a peer hanging mid-request."""

    def __init__(self, server: asyncio.Server) -> None:
        self.server = server
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator[SilentListener]:
        listener: SilentListener | None = None

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert listener is not None
            listener.accepted += 1
            listener._writers.append(writer)
            await reader.read()  # until the client hangs up
            writer.close()

        listener = cls(await asyncio.start_server(hold, "127.0.0.1", 0))
        try:
            yield listener
        finally:
            listener.server.close()
            for writer in listener._writers:
                writer.close()
            await listener.server.wait_closed()

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    return free_port()


@pytest.fixture
def snapshot_url() -> Iterator[str]:
    """A served snapshot the agent hydrates (so its dev server runs before the signal)."""
    data, digest = build_zip({"index.html": INDEX})

    def respond(handler: BaseHTTPRequestHandler, count: int) -> None:
        send_bytes(handler, data)

    with serving(respond) as server:
        yield f"{server.base}/snapshot.zip?signature=SIGNED" + fragment(digest, watermark=1)


async def expect_clean_stop(agent: AgentProcess) -> None:
    code = await agent.terminate()
    assert code == 0, agent.log
    assert agent.logged("stop requested") and agent.logged("agent stopped (exit 0)"), agent.log


async def test_sigterm_stops_a_hydrated_agent_whose_gateway_refuses(
    tmp_path: Path, snapshot_url: str
) -> None:
    gateway = f"ws://127.0.0.1:{closed_port()}/realtime/v1/websocket"
    async with running_agent(tmp_path, snapshot_url, gateway) as agent:
        await agent.wait_until_logged("dev server running")
        await agent.wait_until_logged("cannot reach the gateway (ConnectionRefusedError")
        await expect_clean_stop(agent)
    assert (tmp_path / "project" / "index.html").read_bytes() == INDEX


async def test_sigterm_stops_an_agent_whose_gateway_rejects_the_upgrade(
    tmp_path: Path, snapshot_url: str
) -> None:
    def unavailable(handler: BaseHTTPRequestHandler, count: int) -> None:
        send_bytes(handler, b"down for maintenance", status=503)

    with serving(unavailable) as gateway:
        realtime_url = gateway.base.replace("http://", "ws://") + "/realtime/v1/websocket"
        async with running_agent(tmp_path, snapshot_url, realtime_url) as agent:
            await agent.wait_until_logged("dev server running")
            await agent.wait_until_logged("cannot reach the gateway (InvalidStatus")
            await expect_clean_stop(agent)
        assert gateway.requests, "the agent never tried the gateway"


async def test_sigterm_stops_an_agent_stuck_in_the_gateway_handshake(
    tmp_path: Path, snapshot_url: str
) -> None:
    async with SilentListener.open() as gateway:
        realtime_url = f"ws://127.0.0.1:{gateway.port}/realtime/v1/websocket"
        async with running_agent(tmp_path, snapshot_url, realtime_url) as agent:
            await agent.wait_until_logged("dev server running")
            await wait_until(
                lambda: gateway.accepted >= 1, timeout=START_DEADLINE, message="a handshake"
            )
            await expect_clean_stop(agent)
        assert not agent.logged("cannot reach the gateway"), "the handshake did not hang"


async def test_sigterm_stops_an_agent_retrying_a_refused_snapshot_download(
    tmp_path: Path,
) -> None:
    _, digest = build_zip({"index.html": INDEX})
    snapshot = f"http://127.0.0.1:{closed_port()}/snapshot.zip" + fragment(digest, watermark=1)
    gateway = f"ws://127.0.0.1:{closed_port()}/realtime/v1/websocket"
    async with running_agent(tmp_path, snapshot, gateway) as agent:
        await agent.wait_until_logged("snapshot download attempt 1/6 failed")
        await expect_clean_stop(agent)
    assert not agent.logged("hydrated snapshot")
    assert not agent.logged("cannot reach the gateway"), "hydration was over before the signal"


async def test_sigterm_stops_an_agent_whose_snapshot_download_hangs(tmp_path: Path) -> None:
    _, digest = build_zip({"index.html": INDEX})
    gateway = f"ws://127.0.0.1:{closed_port()}/realtime/v1/websocket"
    async with SilentListener.open() as store:
        snapshot = f"http://127.0.0.1:{store.port}/snapshot.zip" + fragment(digest, watermark=1)
        async with running_agent(tmp_path, snapshot, gateway) as agent:
            await wait_until(
                lambda: store.accepted >= 1, timeout=START_DEADLINE, message="a download"
            )
            await expect_clean_stop(agent)
    assert not agent.logged("snapshot download attempt"), "the download did not hang"
    assert not (tmp_path / "project").exists()
