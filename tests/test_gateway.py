"""The realtime gateway over real websockets on loopback, against a real database."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from contextlib import contextmanager

import jwt
import pytest
import websockets

from orchestrator.app import create_app
from velocity.db import Actor
from velocity.files import FileClient
from velocity.settings import Settings
from velocity.tokens import mint_container_token, mint_user_token

from .helpers import wait_for
from .phoenix import PhoenixClient
from .servers import free_port, serving


def make_settings(database_url: str, home, port: int, **overrides) -> Settings:
    return Settings(home=home, database_url=database_url, storage=f"local://{home / 'store'}",
                    public_url=f"http://127.0.0.1:{port}", **overrides)


@contextmanager
def gateway(database_url: str, home, **overrides):
    port = free_port()
    settings = make_settings(database_url, home, port, **overrides)
    with serving(create_app(settings), port) as running:
        wait_for(lambda: running.server.started, message="server")
        yield settings, running


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway-home")


@pytest.fixture(scope="module")
def server(database_url, home):
    with gateway(database_url, home) as (settings, running):
        yield settings, running


@pytest.fixture
def settings(server):
    return server[0]


@pytest.fixture
def ws_url(server):
    return server[1].ws_url


@pytest.fixture
def service(db):
    return FileClient(db, Actor.service())


def topic(project_id) -> str:
    return f"realtime:project:{project_id}"


def start_session(db, settings, project_id, user_id, ttl: int = 600):
    session_id = uuid.uuid4()
    token, claims = mint_container_token(session_id, project_id, ttl, settings)
    with db.transaction() as conn:
        conn.execute("INSERT INTO preview_sessions (id, user_id, project_id, status, token_jti)"
                     " VALUES (%s, %s, %s, 'active', %s)",
                     (session_id, user_id, project_id, claims.jti))
    return session_id, token


async def test_a_member_joins_and_receives_live_events_in_order(db, settings, ws_url,
                                                                 new_project, service):
    project_id, owner = new_project()
    client = await PhoenixClient.connect(ws_url, mint_user_token(owner, 600, settings))
    joined = await client.join(topic(project_id))
    assert joined == {"status": "ok",
                      "response": {"postgres_changes": [], "velocity": {"head_seq": 0}}}
    service.upsert(project_id, "src/a.ts", "one")
    service.upsert(project_id, "src/a.ts", "two")
    service.delete(project_id, "src/a.ts")
    service.bulk_upsert(project_id, [{"file_path": "b", "content": "B"},
                                     {"file_path": "c", "content": "C"}])
    events = await client.events(4)
    assert [(e["event"], e["meta"]["seq"]) for e in events] == [
        ("file:update", 1), ("file:update", 2), ("file:delete", 3), ("bulk:apply", 4)]
    assert events[1]["payload"]["content"] == "two" and events[1]["payload"]["seq"] == 2
    assert events[1]["type"] == "broadcast"
    assert [f["content"] for f in events[3]["payload"]["files"]] == ["B", "C"]
    await client.close()


async def test_replay_from_a_seq_comes_before_live_events(db, settings, ws_url, new_project,
                                                          service):
    project_id, owner = new_project()
    for n in range(700):  # more than the recent-events window and one fetch batch
        service.upsert(project_id, f"f{n % 10}.txt", str(n))
    client = await PhoenixClient.connect(ws_url, mint_user_token(owner, 600, settings))
    joined = await client.join(topic(project_id), since_seq=3)
    assert joined["response"]["velocity"]["head_seq"] == 700
    service.upsert(project_id, "live.txt", "live")
    events = await client.events(698, timeout=30)
    assert [e["meta"]["seq"] for e in events] == list(range(4, 702))
    assert events[-1]["payload"]["file_path"] == "live.txt"
    await client.close()


async def test_vsn_2_arrays_and_the_seeds_topic_alias(db, settings, ws_url, new_project,
                                                      service):
    project_id, owner = new_project()
    client = await PhoenixClient.connect(ws_url, mint_user_token(owner, 600, settings),
                                         vsn="2.0.0")
    alias = f"realtime:realtime:project:{project_id}"
    raw_join_ref = await client.send(alias, "phx_join", {"config": {}}, join_ref="1")
    assert (await client.reply_to(raw_join_ref))["status"] == "ok"
    service.upsert(project_id, "x.txt", "x")
    message = await client.receive_until(lambda m: m["event"] == "broadcast")
    assert message["topic"] == alias and message["payload"]["event"] == "file:update"
    heartbeat = await client.send("phoenix", "heartbeat", {})
    assert (await client.reply_to(heartbeat))["status"] == "ok"
    await client.close()


def _forged(token: str) -> str:
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.{base64.urlsafe_b64encode(b'x' * 32).decode().rstrip('=')}"


def _alg_none(user_id) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"sub": str(user_id), "role": "authenticated", "aud": "authenticated",
              "exp": int(time.time()) + 600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_every_token_failure_is_refused_with_its_reason(db, settings, ws_url,
                                                              new_project, new_user):
    project_id, owner = new_project()
    other_project, _ = new_project()
    stranger = new_user("stranger")
    _, container_token = start_session(db, settings, project_id, owner)
    expired = mint_user_token(owner, 60, settings, now=int(time.time()) - 3600)
    wrong_audience = jwt.encode({"sub": str(owner), "role": "authenticated", "aud": "other",
                                 "exp": int(time.time()) + 600}, settings.user_jwt_secret(),
                                algorithm="HS256")
    cases = {
        "wrong_audience": wrong_audience,
        "missing_token": None,
        "expired": expired,
        "bad_signature": _forged(mint_user_token(owner, 600, settings)),
        "alg_not_allowed": _alg_none(owner),
        "not_a_member": mint_user_token(stranger, 600, settings),
        "wrong_topic": container_token,  # joining another project's topic
        "malformed": "not-a-jwt",
    }
    for reason, token in cases.items():
        client = await PhoenixClient.connect(ws_url)
        target = other_project if reason == "wrong_topic" else project_id
        joined = await client.join(topic(target), token=token)
        assert joined == {"status": "error", "response": {"reason": reason}}, reason
        await client.close()
    client = await PhoenixClient.connect(ws_url)
    assert (await client.join("realtime:elsewhere", token=expired))["response"] == {
        "reason": "unknown_topic"}
    await client.close()


async def test_a_container_token_joins_its_live_session_only(db, settings, ws_url,
                                                             new_project, service):
    project_id, owner = new_project()
    session_id, token = start_session(db, settings, project_id, owner)
    client = await PhoenixClient.connect(ws_url, token)
    assert (await client.join(topic(project_id)))["status"] == "ok"
    service.upsert(project_id, "a.txt", "a")
    assert (await client.events(1))[0]["payload"]["content"] == "a"

    # Stopping the session revokes the token at once: a system message, then phx_close.
    with db.transaction() as conn:
        conn.execute("UPDATE preview_sessions SET status = 'ended', ended_at = now()"
                     " WHERE id = %s", (session_id,))
    system = await client.receive_until(lambda m: m["event"] == "system")
    assert system["payload"]["code"] == "session_ended"
    assert (await client.receive())["event"] == "phx_close"
    await client.close()

    again = await PhoenixClient.connect(ws_url, token)
    assert (await again.join(topic(project_id)))["response"] == {"reason": "session_ended"}
    await again.close()


async def test_a_token_that_expires_while_joined_closes_the_channel(db, settings, ws_url,
                                                                    new_project):
    project_id, owner = new_project()
    client = await PhoenixClient.connect(ws_url, mint_user_token(owner, 2, settings))
    assert (await client.join(topic(project_id)))["status"] == "ok"
    system = await client.receive_until(lambda m: m["event"] == "system", timeout=15)
    assert system["payload"]["code"] == "token_expired"
    assert (await client.receive())["event"] == "phx_close"
    await client.close()


async def test_agent_status_is_recorded_on_the_session(db, settings, server, new_project):
    project_id, owner = new_project()
    session_id, token = start_session(db, settings, project_id, owner)
    client = await PhoenixClient.connect(server[1].ws_url, token)
    await client.join(topic(project_id))
    ref = await client.send(topic(project_id), "velocity:status",
                            {"ready": True, "applied_seq": 0, "lag_ms": 1.5,
                             "dev_server": "running", "error": None, "hydrations": 1})
    assert (await client.reply_to(ref))["status"] == "ok"

    def recorded():
        with db.transaction() as conn:
            return conn.execute("SELECT agent_status, applied_seq, heartbeat_at FROM"
                                " preview_sessions WHERE id = %s AND heartbeat_at IS NOT NULL",
                                (session_id,)).fetchone()

    status, applied, heartbeat = wait_for(recorded, message="the status to be recorded")
    assert status["ready"] is True and status["dev_server"] == "running" and applied == 0
    # Users cannot report agent status.
    user = await PhoenixClient.connect(server[1].ws_url, mint_user_token(owner, 600, settings))
    await user.join(topic(project_id))
    ref = await user.send(topic(project_id), "velocity:status", {"ready": True})
    assert (await user.reply_to(ref))["response"] == {"reason": "not_an_agent"}
    await client.close()
    await user.close()


async def test_client_broadcasts_relay_only_when_the_flag_is_on(db, settings, ws_url,
                                                                new_project, new_user):
    editor = new_user("editor")
    project_id, owner = new_project(members=[(editor, "editor")])
    _, container_token = start_session(db, settings, project_id, owner)
    sender = await PhoenixClient.connect(ws_url, mint_user_token(owner, 600, settings))
    receiver = await PhoenixClient.connect(ws_url, mint_user_token(editor, 600, settings))
    agent = await PhoenixClient.connect(ws_url, container_token)
    for client in (sender, receiver, agent):
        assert (await client.join(topic(project_id)))["status"] == "ok"
    cursor = {"type": "broadcast", "event": "cursor", "payload": {"line": 3}}
    ref = await sender.send(topic(project_id), "broadcast", cursor)
    assert (await sender.reply_to(ref))["response"] == {"reason": "client_broadcast_disabled"}

    with db.transaction() as conn:
        conn.execute("UPDATE feature_flags SET is_enabled = true, rollout_percentage = 100"
                     " WHERE flag_key = 'FSYNC_KEEP_CLIENT_BROADCAST'")
    try:
        relayed = None
        deadline = time.monotonic() + 15
        while relayed is None and time.monotonic() < deadline:  # the flag is cached briefly
            ref = await sender.send(topic(project_id), "broadcast", cursor)
            if (await sender.reply_to(ref))["status"] == "ok":
                relayed = await receiver.receive_until(
                    lambda m: m["event"] == "broadcast" and m["payload"]["event"] == "cursor")
            else:
                await asyncio.sleep(0.2)  # retry after the flag cache turns over
        assert relayed is not None and relayed["payload"]["payload"] == {"line": 3}
        ref = await agent.send(topic(project_id), "broadcast", cursor)
        assert (await agent.reply_to(ref))["response"] == {"reason": "read_only"}
        # The agent never received the client broadcast: its next frame is the file event.
        FileClient(db, Actor.service()).upsert(project_id, "z.txt", "z")
        next_frame = await agent.receive_until(lambda m: m["event"] == "broadcast")
        assert next_frame["payload"]["event"] == "file:update"
    finally:
        with db.transaction() as conn:
            conn.execute("UPDATE feature_flags SET is_enabled = false, rollout_percentage = 0"
                         " WHERE flag_key = 'FSYNC_KEEP_CLIENT_BROADCAST'")
    for client in (sender, receiver, agent):
        await client.close()


async def test_malformed_frames_close_the_socket(settings, ws_url):
    for frame in ["{not json", "[1,2]", '{"topic": 5, "event": "x"}']:
        websocket = await websockets.connect(ws_url + "?vsn=1.0.0")
        await websocket.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), 10)
        assert closed.value.rcvd.code == 1002
    unknown = await PhoenixClient.connect(ws_url)
    ref = await unknown.send("realtime:project:x", "who_knows", {})
    assert (await unknown.reply_to(ref))["response"] == {"reason": "unmatched topic"}
    await unknown.close()


async def test_large_events_travel_in_parts_and_oversize_ones_ask_for_resync(
        db, database_url, tmp_path, new_project, service):
    project_id, owner = new_project()
    with gateway(database_url, tmp_path, realtime_max_frame_bytes=8192,
                 realtime_max_event_bytes=200_000) as (settings, running):
        client = await PhoenixClient.connect(running.ws_url, mint_user_token(owner, 600, settings))
        await client.join(topic(project_id))
        content = "".join(chr(0x20 + (n % 90)) for n in range(60_000)) + '"\\\n é'
        service.upsert(project_id, "big.txt", content)
        parts = []
        while not parts or len(parts) < parts[0]["payload"]["count"]:
            message = await client.receive_until(lambda m: m["event"] == "broadcast")
            assert len(json.dumps(message).encode()) <= 8192
            assert message["payload"]["event"] == "velocity:part"
            parts.append(message["payload"])
        assert [p["payload"]["index"] for p in parts] == list(range(len(parts)))
        inner = json.loads("".join(p["payload"]["data"] for p in parts))
        assert inner["content"] == content and parts[0]["meta"]["seq"] == 1

        service.upsert(project_id, "huge.txt", "y" * 300_000)
        system = await client.receive_until(lambda m: m["event"] == "system")
        assert system["payload"]["code"] == "resync"
        assert system["payload"]["reason"] == "event_too_large"
        await client.close()


async def test_a_join_behind_the_retained_log_is_told_to_resync(db, settings, ws_url,
                                                                 new_project, service):
    project_id, owner = new_project()
    for n in range(5):
        service.upsert(project_id, "a.txt", str(n))
    with db.transaction() as conn:
        conn.execute("DELETE FROM file_events WHERE project_id = %s AND seq <= 3", (project_id,))
        conn.execute("UPDATE projects SET pruned_through_seq = 3 WHERE id = %s", (project_id,))
    client = await PhoenixClient.connect(ws_url, mint_user_token(owner, 600, settings))
    assert (await client.join(topic(project_id), since_seq=1))["status"] == "ok"
    system = await client.receive_until(lambda m: m["event"] == "system")
    assert system["payload"]["code"] == "resync"
    assert system["payload"]["reason"] == "events_pruned"
    await client.close()


async def test_a_slow_consumer_is_dropped_and_others_keep_their_latency(
        db, database_url, tmp_path, new_project, service):
    project_id, owner = new_project()
    with gateway(database_url, tmp_path, realtime_send_queue=32) as (settings, running):
        token = mint_user_token(owner, 600, settings)
        # A small receive buffer turns off loopback autotuning (up to 32 MB here), so the
        # gateway's own queue is what fills when this client stops reading.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        raw.connect(("127.0.0.1", running.port))
        slow = await PhoenixClient.connect(running.ws_url, token, max_queue=1, sock=raw)
        fast = await PhoenixClient.connect(running.ws_url, token)
        await slow.join(topic(project_id))
        await fast.join(topic(project_id))
        slow.ws.transport.pause_reading()  # a reader that stops reading
        latencies = []
        content = base64.b64encode(os.urandom(150_000)).decode()  # incompressible
        for n in range(120):
            started = time.perf_counter()
            service.upsert(project_id, "flood.txt", f"{n}{content}")
            (event,) = await fast.events(1)
            latencies.append(time.perf_counter() - started)
            assert event["meta"]["seq"] == n + 1
        assert sorted(latencies)[len(latencies) // 2] < 0.25

        slow.ws.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        assert closed.value.rcvd.reason == "slow consumer"
        await fast.close()


async def test_the_real_supabase_realtime_client_receives_a_file_update(db, settings, ws_url,
                                                                        new_project, service):
    from realtime import AsyncRealtimeClient

    project_id, owner = new_project()
    token = mint_user_token(owner, 600, settings)
    client = AsyncRealtimeClient(ws_url.removesuffix("/websocket"), token, auto_reconnect=False)
    await client.connect()
    received: asyncio.Queue = asyncio.Queue()
    subscribed = asyncio.Event()
    channel = client.channel(f"project:{project_id}")
    channel.on_broadcast("file:update", lambda payload: received.put_nowait(payload))

    def on_subscribe(state, error):
        if str(state).endswith("SUBSCRIBED"):
            subscribed.set()

    await channel.subscribe(on_subscribe)
    await asyncio.wait_for(subscribed.wait(), 10)
    service.upsert(project_id, "index.html", "<h1>from the database</h1>")
    payload = await asyncio.wait_for(received.get(), 10)
    assert payload["event"] == "file:update"
    assert payload["payload"]["content"] == "<h1>from the database</h1>"
    assert payload["payload"]["seq"] == 1  # realtime-py keeps only the meta keys it knows
    await client.close()


async def test_a_silent_socket_is_closed_at_the_heartbeat_timeout(database_url, tmp_path):
    with gateway(database_url, tmp_path, realtime_idle_timeout_seconds=1) as (settings, running):
        silent = await websockets.connect(running.ws_url + "?vsn=1.0.0")
        chatty = await PhoenixClient.connect(running.ws_url)
        closed = None
        deadline = time.monotonic() + 10
        while closed is None and time.monotonic() < deadline:
            ref = await chatty.send("phoenix", "heartbeat", {})  # keeps this one alive
            assert (await chatty.reply_to(ref))["status"] == "ok"
            try:
                await asyncio.wait_for(silent.recv(), 0.3)
            except TimeoutError:
                continue
            except websockets.ConnectionClosed as error:
                closed = error
        assert closed is not None and closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "heartbeat timeout")
        ref = await chatty.send("phoenix", "heartbeat", {})
        assert (await chatty.reply_to(ref))["status"] == "ok"
        await chatty.close()
