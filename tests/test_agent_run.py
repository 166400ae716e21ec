"""The whole agent against a peer that speaks docs/realtime.md: hydrate, join from the
watermark, apply in order, heal gaps, reassemble parts, resync, report, stop cleanly.

The peer below is a small, literal reading of the document (not the platform's gateway,
which has its own end-to-end tests with the agent)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent.backoff import BackoffPolicy
from agent.config import AgentConfig, load_config
from agent.devserver import free_port
from agent.main import EXIT_OK, EXIT_SESSION_OVER, Agent
from tests.test_agent_support import (
    HTTPServerThread,
    build_zip,
    fragment,
    send_bytes,
    sha256,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "container-token-" + uuid.uuid4().hex
FAST = BackoffPolicy(initial=0.02, maximum=0.1)


class Peer:
    """A Phoenix vsn 1.0.0 endpoint for one project topic, scripted by the tests."""

    def __init__(self, project_id: str, watermark: int) -> None:
        self.topic = f"realtime:project:{project_id}"
        self.head = watermark
        self.events: dict[int, tuple[str, dict[str, Any]]] = {}
        self.subscribers: dict[ServerConnection, str] = {}
        self.joins: list[int | None] = []
        self.statuses: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.tokens: list[str | None] = []
        self.refuse_join: str | None = None
        self.answer_heartbeats = True
        self.snapshot: dict[str, Any] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1/websocket"

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame.get("event") == name]

    async def handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        assert query.get("vsn") == ["1.0.0"]
        self.tokens.append(query.get("apikey", [None])[0])
        try:
            async for raw in ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                await self.on_frame(ws, frame)
        except ConnectionClosed:
            pass
        finally:
            self.subscribers.pop(ws, None)

    async def on_frame(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        event, payload = frame["event"], frame["payload"]
        if event == "heartbeat":
            assert frame["topic"] == "phoenix"
            if self.answer_heartbeats:
                await self.reply(ws, frame, "ok", {})
        elif event == "phx_join":
            assert frame["topic"] == self.topic and payload["access_token"] == TOKEN
            since = payload["config"]["velocity"].get("since_seq")
            self.joins.append(since)
            if self.refuse_join:
                await self.reply(ws, frame, "error", {"reason": self.refuse_join})
                return
            await self.reply(
                ws, frame, "ok", {"postgres_changes": [], "velocity": {"head_seq": self.head}}
            )
            self.subscribers[ws] = frame["join_ref"]
            for seq in sorted(self.events):
                if since is not None and seq > since:
                    await self.send_event(ws, seq)
        elif event == "phx_leave":
            self.subscribers.pop(ws, None)
            await self.reply(ws, frame, "ok", {})
            await self.push(ws, "phx_close", {}, frame["join_ref"])
        elif event == "velocity:status":
            self.statuses.append(payload)
            await self.reply(ws, frame, "ok", {})
        elif event == "velocity:snapshot":
            if self.snapshot is None:
                await self.reply(ws, frame, "error", {"reason": "no_snapshot"})
            else:
                await self.reply(ws, frame, "ok", self.snapshot)

    async def reply(
        self, ws: ServerConnection, frame: dict[str, Any], status: str, response: dict[str, Any]
    ) -> None:
        await ws.send(
            json.dumps(
                {
                    "topic": frame["topic"],
                    "event": "phx_reply",
                    "ref": frame["ref"],
                    "join_ref": frame.get("join_ref"),
                    "payload": {"status": status, "response": response},
                }
            )
        )

    async def push(
        self, ws: ServerConnection, event: str, payload: dict[str, Any], join_ref: str | None
    ) -> None:
        await ws.send(
            json.dumps(
                {
                    "topic": self.topic,
                    "event": event,
                    "payload": payload,
                    "ref": None,
                    "join_ref": join_ref,
                }
            )
        )

    def record(self, kind: str, payload: dict[str, Any]) -> int:
        self.head += 1
        stamp = datetime.now(UTC).isoformat()
        self.events[self.head] = (
            kind,
            {**payload, "seq": self.head, "sender": "u", "timestamp": stamp},
        )
        return self.head

    async def publish(self, kind: str, payload: dict[str, Any], deliver: bool = True) -> int:
        """Log an event; send it to every subscriber unless `deliver` is False (a loss)."""
        seq = self.record(kind, payload)
        if deliver:
            for ws in list(self.subscribers):
                await self.send_event(ws, seq)
        return seq

    async def send_event(self, ws: ServerConnection, seq: int, parts: int = 0) -> None:
        kind, payload = self.events[seq]
        join_ref = self.subscribers[ws]
        if not parts:
            await self.push(
                ws,
                "broadcast",
                {
                    "type": "broadcast",
                    "event": kind,
                    "payload": payload,
                    "meta": {"id": f"P:{seq}", "seq": seq},
                },
                join_ref,
            )
            return
        text = json.dumps(payload)
        size = -(-len(text) // parts)
        for index in range(parts):
            part = {
                "seq": seq,
                "event": kind,
                "index": index,
                "count": parts,
                "data": text[index * size : (index + 1) * size],
            }
            await self.push(
                ws,
                "broadcast",
                {"type": "broadcast", "event": "velocity:part", "payload": part},
                join_ref,
            )

    async def system(self, code: str, **facts: Any) -> None:
        for ws, join_ref in list(self.subscribers.items()):
            await self.push(
                ws,
                "system",
                {
                    "channel": self.topic.removeprefix("realtime:"),
                    "extension": "velocity",
                    "status": "error",
                    "message": code,
                    "code": code,
                    **facts,
                },
                join_ref,
            )

    async def disconnect_all(self, code: int, reason: str) -> None:
        for ws in list(self.subscribers):
            await ws.close(code, reason)


@pytest_asyncio.fixture(loop_scope="function")
async def peer_factory() -> AsyncIterator[Callable[[str, int], Awaitable[Peer]]]:
    """Starts Peers on free ports in the test's own loop; closes them after the test."""
    async with AsyncExitStack() as stack:

        async def start(project_id: str, watermark: int) -> Peer:
            peer = Peer(project_id, watermark)
            server = await stack.enter_async_context(serve(peer.handle, "127.0.0.1", 0))
            peer.port = next(iter(server.sockets)).getsockname()[1]
            return peer

        yield start


PeerFactory = Callable[[str, int], Awaitable[Peer]]


class Store:
    """Signed-URL downloads: `path → zip bytes`; anything else is 403."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

        def respond(handler: BaseHTTPRequestHandler, count: int) -> None:
            path = handler.path.split("?")[0]
            if path in self.blobs:
                send_bytes(handler, self.blobs[path])
            else:
                send_bytes(handler, b"expired", status=403)

        self.server = HTTPServerThread(respond)

    def add(self, path: str, files: dict[str, bytes], watermark: int) -> tuple[str, dict]:
        data, digest = build_zip(files)
        self.blobs[path] = data
        snapshot_id = str(uuid.uuid4())
        url = f"{self.server.base}{path}?signature=SIGNED"
        reply = {"url": url, "sha256": digest, "watermark": watermark, "snapshot_id": snapshot_id}
        return url + fragment(digest, watermark, snapshot_id), reply


@pytest.fixture
def store() -> Iterator[Store]:
    owner = Store()
    with owner.server:
        yield owner


def make_config(tmp_path: Path, peer: Peer, snapshot_url: str, **tunables: Any) -> AgentConfig:
    env = {
        "PROJECT_ID": peer.topic.rsplit(":", 1)[1],
        "SESSION_ID": str(uuid.uuid4()),
        "SNAPSHOT_URL": snapshot_url,
        "REALTIME_URL": peer.url,
        "REALTIME_TOKEN": TOKEN,
        "PORT": "0",
    }
    config = load_config(env, cwd=tmp_path)
    defaults = {
        "heartbeat_interval": 0.2,
        "status_interval": 0.2,
        "download_backoff": FAST,
        "reconnect_backoff": FAST,
        "push_timeout": 5.0,
        "stop_timeout": 1.0,
    }
    return dataclasses.replace(config, **{**defaults, **tunables})


async def healthz(agent: Agent) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{agent.health_port}/healthz")
        return response.status_code, response.json()


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


async def test_the_agent_follows_the_channel_from_hydration_to_stop(
    tmp_path: Path, store: Store, peer_factory: PeerFactory
) -> None:
    project_id = str(uuid.uuid4())
    first = {"index.html": b"<html><body>v1</body></html>", "src/a.txt": b"a"}
    snapshot_url, _ = store.add("/snap/1.zip", first, watermark=3)
    peer = await peer_factory(project_id, 3)
    agent = Agent(make_config(tmp_path, peer, snapshot_url))
    run = asyncio.create_task(agent.run())
    project = tmp_path / "project"
    try:
        # hydrated, joined from the watermark, serving, reporting
        await wait_until(lambda: agent.status.current.ready, message="ready")
        assert tree(project) == first and peer.joins == [3] and peer.tokens == [TOKEN]
        code, body = await healthz(agent)
        assert code == 200 and body == {
            "ready": True,
            "applied_seq": 3,
            "lag_ms": None,
            "dev_server": "running",
            "error": None,
            "hydrations": 1,
        }
        await wait_until(lambda: any(s["ready"] for s in peer.statuses), message="a status")
        page = httpx.get(f"http://127.0.0.1:{agent.preview_port}/")
        assert b"v1" in page.content and b"EventSource" in page.content

        # live events, in order, with a live-reload signal each
        generation = agent.live_reload.generation
        await peer.publish(
            "file:update",
            {"file_path": "src/b.txt", "content": "b", "content_hash": sha256(b"b"), "version": 1},
        )
        await wait_until(lambda: agent.status.current.applied_seq == 4, message="seq 4")
        assert (project / "src/b.txt").read_text() == "b"
        assert agent.live_reload.generation > generation
        assert isinstance(agent.status.current.lag_ms, int)

        # a lost event: seq 6 arrives after 4, the agent rejoins from 4 and gets 5 and 6
        await peer.publish("file:delete", {"file_path": "src/a.txt", "version": 2}, deliver=False)
        await peer.publish(
            "file:update",
            {"file_path": "c.txt", "content": "c", "content_hash": sha256(b"c"), "version": 1},
        )
        await wait_until(lambda: agent.status.current.applied_seq == 6, message="seq 6")
        assert peer.joins == [3, 4]
        assert not (project / "src/a.txt").exists() and (project / "c.txt").read_text() == "c"

        # a large bulk event in parts, then a duplicate that changes nothing
        files = [
            {
                "action": "update",
                "file_path": f"bulk/{i}.txt",
                "content": str(i) * 500,
                "content_hash": sha256((str(i) * 500).encode()),
                "version": 1,
            }
            for i in range(10)
        ]
        seq = peer.record("bulk:apply", {"files": files, "count": 10})
        for ws in list(peer.subscribers):
            await peer.send_event(ws, seq, parts=4)
        await wait_until(lambda: agent.status.current.applied_seq == 7, message="bulk")
        assert len(list((project / "bulk").iterdir())) == 10
        for ws in list(peer.subscribers):
            await peer.send_event(ws, 6)
        await peer.publish(
            "snapshot:ready",
            {
                "snapshot_id": str(uuid.uuid4()),
                "watermark": 7,
                "sha256": "0" * 64,
                "size": 1,
                "files": 13,
            },
        )
        await wait_until(lambda: agent.status.current.applied_seq == 8, message="seq 8")

        # a slow-consumer disconnect: reconnect and resume from the last applied seq
        await peer.disconnect_all(4008, "slow consumer")
        await wait_until(lambda: peer.joins == [3, 4, 8], message="rejoin from 8")
        await wait_until(lambda: agent.status.current.ready, message="ready again")

        # a resync: fresh snapshot over the channel, hydrate, rejoin from its watermark
        second = {"index.html": b"<html><body>v2</body></html>"}
        _, peer.snapshot = store.add("/snap/2.zip", second, watermark=20)
        peer.head = 20
        await peer.system("resync", reason="events_pruned", head_seq=20)
        await wait_until(lambda: peer.joins[-1] == 20, message="rejoin from 20")
        assert tree(project) == second
        assert agent.status.current.hydrations == 2
        assert agent.status.current.applied_seq == 20
        assert len(peer.events_named("velocity:snapshot")) == 1
        await peer.publish(
            "file:update",
            {"file_path": "after.txt", "content": "z", "content_hash": sha256(b"z"), "version": 1},
        )
        await wait_until(lambda: (project / "after.txt").exists(), message="seq 21")

        await wait_until(lambda: peer.events_named("heartbeat"), message="a heartbeat")
    finally:
        agent.request_stop()
        code = await asyncio.wait_for(run, 10)
    assert code == EXIT_OK
    assert peer.events_named("phx_leave")
    assert agent.status.current.dev_server == "stopped"


async def test_an_expired_snapshot_link_is_replaced_over_the_channel(
    tmp_path: Path, store: Store, peer_factory: PeerFactory
) -> None:
    files = {"index.html": b"<html><body>fresh</body></html>"}
    _, reply = store.add("/snap/fresh.zip", files, watermark=9)
    expired_url = f"{store.server.base}/snap/expired.zip?signature=OLD" + fragment("a" * 64, 5)
    peer = await peer_factory(str(uuid.uuid4()), 9)
    peer.snapshot = reply
    agent = Agent(make_config(tmp_path, peer, expired_url))
    run = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: agent.status.current.ready, message="ready")
        assert tree(tmp_path / "project") == files
        assert peer.joins == [5, 9]  # joined to ask, rejoined from the fresh watermark
        assert agent.status.current.hydrations == 1
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(run, 10) == EXIT_OK


@pytest.mark.parametrize("how", ["join_refused", "system_message"])
async def test_an_ended_session_stops_the_agent_for_good(
    tmp_path: Path, store: Store, peer_factory: PeerFactory, how: str
) -> None:
    snapshot_url, _ = store.add("/snap/1.zip", {"a.txt": b"a"}, watermark=0)
    peer = await peer_factory(str(uuid.uuid4()), 0)
    if how == "join_refused":
        peer.refuse_join = "session_ended"
    agent = Agent(make_config(tmp_path, peer, snapshot_url))
    run = asyncio.create_task(agent.run())
    if how == "system_message":
        await wait_until(lambda: agent.status.current.ready, message="ready")
        await peer.system("session_ended")
        for ws, join_ref in list(peer.subscribers.items()):
            await peer.push(ws, "phx_close", {}, join_ref)
    code = await asyncio.wait_for(run, 10)
    assert code == EXIT_SESSION_OVER
    assert len(peer.joins) == 1  # never retried
    assert "session_ended" in (agent.status.current.error or "")


async def test_a_transient_join_error_is_retried(
    tmp_path: Path, store: Store, peer_factory: PeerFactory
) -> None:
    snapshot_url, _ = store.add("/snap/1.zip", {"a.txt": b"a"}, watermark=2)
    peer = await peer_factory(str(uuid.uuid4()), 2)
    peer.refuse_join = "tenant_events_overloaded"
    agent = Agent(make_config(tmp_path, peer, snapshot_url))
    run = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: len(peer.joins) >= 3, message="retries")
        assert not agent.status.current.ready
        peer.refuse_join = None
        await wait_until(lambda: agent.status.current.ready, message="ready")
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(run, 10) == EXIT_OK


async def test_python_m_agent_stops_on_sigterm_and_never_logs_secrets(
    tmp_path: Path, store: Store, peer_factory: PeerFactory
) -> None:
    snapshot_url, _ = store.add("/snap/1.zip", {"index.html": b"<body>x</body>"}, watermark=1)
    peer = await peer_factory(str(uuid.uuid4()), 1)
    health_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "PROJECT_ID": peer.topic.rsplit(":", 1)[1],
        "SESSION_ID": str(uuid.uuid4()),
        "SNAPSHOT_URL": snapshot_url,
        "REALTIME_URL": peer.url,
        "REALTIME_TOKEN": TOKEN,
        "PORT": "0",
        "HEALTH_PORT": str(health_port),
        "LOG_LEVEL": "DEBUG",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"http://127.0.0.1:{health_port}/healthz")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await wait_until(ready, timeout=20, message="the agent ready")
        await peer.publish(
            "file:update",
            {"file_path": "n.txt", "content": "n", "content_hash": sha256(b"n"), "version": 1},
        )
        await wait_until(lambda: (tmp_path / "project" / "n.txt").exists(), message="applied")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (stdout + stderr).decode()
    assert process.returncode == 0, log
    assert peer.events_named("phx_leave")
    assert TOKEN not in log and "SIGNED" not in log
    assert f"project={peer.topic.rsplit(':', 1)[1]}" in log and "applied file:update" in log


async def test_an_event_that_cannot_be_applied_leads_to_a_rehydration(
    tmp_path: Path, store: Store, peer_factory: PeerFactory
) -> None:
    snapshot_url, _ = store.add("/snap/1.zip", {"a.txt": b"a"}, watermark=0)
    peer = await peer_factory(str(uuid.uuid4()), 0)
    agent = Agent(make_config(tmp_path, peer, snapshot_url))
    run = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: agent.status.current.ready, message="ready")
        repaired = {"a.txt": b"a", "logo.png": b"PNG"}
        _, peer.snapshot = store.add("/snap/2.zip", repaired, watermark=1)
        await peer.publish(
            "file:update",
            {  # its link has expired: 403
                "file_path": "logo.png",
                "content_hash": sha256(b"PNG"),
                "size": 3,
                "download_url": f"{store.server.base}/expired/logo.png?signature=X",
            },
        )
        await wait_until(lambda: peer.joins == [0, 1], message="rejoin after re-hydration")
        assert tree(tmp_path / "project") == repaired
        assert agent.status.current.hydrations == 2
        await wait_until(lambda: agent.status.current.ready, message="ready again")
        assert agent.status.current.error is None
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(run, 10) == EXIT_OK


async def test_unanswered_heartbeats_make_the_agent_reconnect(
    tmp_path: Path, store: Store, peer_factory: PeerFactory
) -> None:
    snapshot_url, _ = store.add("/snap/1.zip", {"a.txt": b"a"}, watermark=4)
    peer = await peer_factory(str(uuid.uuid4()), 4)
    agent = Agent(make_config(tmp_path, peer, snapshot_url, heartbeat_interval=0.1))
    run = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: agent.status.current.ready, message="ready")
        await wait_until(lambda: len(peer.events_named("heartbeat")) >= 2, message="beats")
        assert len(peer.tokens) == 1  # answered heartbeats keep the connection
        peer.answer_heartbeats = False
        await wait_until(lambda: len(peer.tokens) >= 2, message="a new connection")
        await wait_until(lambda: peer.joins[-1] == 4 and len(peer.joins) >= 2, message="join")
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(run, 10) == EXIT_OK
