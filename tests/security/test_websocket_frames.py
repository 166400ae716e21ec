"""Attacker input: websocket frames sent to the realtime gateway (user code runs inside the
preview container, so a container token is attacker-held too).

Frames that are not Phoenix messages close that socket with 1002 and a reason (1009 when
over the 1 MiB limit) and nothing else: a subscriber on another socket keeps receiving.
Unknown events, odd join configs and joins to foreign topics get an error reply and no
data. Status reports that do not fit the session row are refused and record nothing, and
cannot stop another session's report from being recorded. Covered in tests/test_gateway.py
already: every token failure at join, `{not json`, non-object frames, a non-string topic, a
user sending `velocity:status`, broadcasts from a container token (`read_only`).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import websockets

from velocity.db import Actor
from velocity.files import FileClient
from velocity.tokens import mint_container_token, mint_user_token

from ..helpers import wait_for
from ..phoenix import PhoenixClient
from .state import unchanged


def topic(project_id) -> str:
    return f"realtime:project:{project_id}"


def start_session(db, settings, project_id, user_id) -> tuple[uuid.UUID, str]:
    session_id = uuid.uuid4()
    token, claims = mint_container_token(session_id, project_id, 600, settings)
    with db.transaction() as conn:
        conn.execute("INSERT INTO preview_sessions (id, user_id, project_id, status, token_jti)"
                     " VALUES (%s, %s, %s, 'active', %s)",
                     (session_id, user_id, project_id, claims.jti))
    return session_id, token


@pytest.fixture
def watched(db, api, new_project):
    """A project, its owner's token, and a way to prove the gateway still delivers."""
    project_id, owner = new_project()
    token = mint_user_token(owner, 600, api.settings)
    service = FileClient(db, Actor.service())

    async def still_delivers(watcher: PhoenixClient, content: str) -> None:
        service.upsert(project_id, "live.txt", content)
        (event,) = await watcher.events(1)
        assert event["payload"]["content"] == content

    return project_id, owner, token, still_delivers


NOT_PHOENIX = {
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "nesting past the limit": json.dumps({"topic": "phoenix", "event": "heartbeat",
                                          "payload": {"p": [[[[[[[[[[[[]]]]]]]]]]]] * 8}}
                                         ).replace("[]", "[" * 60 + "]" * 60),
    "NaN": '{"topic": "phoenix", "event": "heartbeat", "payload": {"n": NaN}, "ref": "1"}',
    "Infinity": '{"topic": "phoenix", "event": "heartbeat", "payload": {"n": 1e999}}',
    "lone surrogate": '{"topic": "realtime:project:\\ud800", "event": "phx_join", "ref": "1"}',
    "payload not an object": '{"topic": "phoenix", "event": "heartbeat", "payload": [1]}',
    "ref not a string": '{"topic": "phoenix", "event": "heartbeat", "ref": {"a": 1}}',
    "empty frame": "",
}


@pytest.mark.parametrize("case", list(NOT_PHOENIX))
async def test_a_frame_that_is_not_a_phoenix_message_closes_only_its_socket(
        db, api, watched, case):
    project_id, _, token, still_delivers = watched
    watcher = await PhoenixClient.connect(api.server.ws_url, token)
    assert (await watcher.join(topic(project_id)))["status"] == "ok"
    with unchanged(db):
        attacker = await websockets.connect(api.server.ws_url + "?vsn=1.0.0")
        await attacker.send(NOT_PHOENIX[case])
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(attacker.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    assert closed.value.rcvd.reason
    await still_delivers(watcher, case)
    await watcher.close()


async def test_vsn_2_frames_of_the_wrong_shape_and_binary_frames_close_the_socket(api):
    for frame in ['["1", "1", "phoenix", "heartbeat"]', '{"topic": "phoenix"}',
                  b'\x00\x01binary']:
        attacker = await websockets.connect(api.server.ws_url + "?vsn=2.0.0")
        await attacker.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(attacker.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002, frame


async def test_an_unknown_protocol_version_is_refused_at_the_handshake(api):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(api.server.ws_url + "?vsn=9.9.9")
    assert refused.value.response.status_code == 403


async def test_a_frame_over_the_size_limit_closes_only_its_socket(db, api, watched):
    project_id, _, token, still_delivers = watched
    watcher = await PhoenixClient.connect(api.server.ws_url, token)
    assert (await watcher.join(topic(project_id)))["status"] == "ok"
    attacker = await websockets.connect(api.server.ws_url + "?vsn=1.0.0", max_size=None)
    frame = json.dumps({"topic": "phoenix", "event": "heartbeat", "ref": "1",
                        "payload": {"pad": "x" * (2 * 1024 * 1024)}})
    with unchanged(db):
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await attacker.send(frame)
            await asyncio.wait_for(attacker.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await still_delivers(watcher, "after a huge frame")
    await watcher.close()


async def test_unknown_events_are_answered_with_an_error_and_change_nothing(db, api, watched):
    project_id, _, token, still_delivers = watched
    client = await PhoenixClient.connect(api.server.ws_url, token)
    with unchanged(db):
        ref = await client.send("phoenix", "shutdown", {})
        assert (await client.reply_to(ref))["response"] == {"reason": "unknown_event"}
        ref = await client.send(topic(project_id), "velocity:status", {"ready": True})
        assert (await client.reply_to(ref))["response"] == {"reason": "unmatched topic"}
        assert (await client.join(topic(project_id)))["status"] == "ok"
        for event in ["postgres_changes", "phx_reply", "velocity:drop_table", "DELETE"]:
            ref = await client.send(topic(project_id), event, {"sql": "DROP TABLE projects"})
            assert (await client.reply_to(ref))["response"] == {"reason": "unknown_event"}
    await still_delivers(client, "still joined")
    await client.close()


ODD_CONFIGS = {
    "config a string": "yes",
    "config a list": [1, 2],
    "broadcast a string": {"broadcast": "self"},
    "velocity a string": {"velocity": "since 0"},
    "self a string": {"broadcast": {"self": "true"}},
}


@pytest.mark.parametrize("case", list(ODD_CONFIGS))
async def test_odd_join_configs_are_ignored_not_fatal(db, api, watched, case):
    project_id, _, token, still_delivers = watched
    client = await PhoenixClient.connect(api.server.ws_url, token)
    ref = await client.send(topic(project_id), "phx_join",
                            {"access_token": token, "config": ODD_CONFIGS[case]}, join_ref="1")
    assert (await client.reply_to(ref))["status"] == "ok"
    await still_delivers(client, case)
    await client.close()


@pytest.mark.parametrize("since_seq", ["0", -1, 1.5, True, [0], {"seq": 0}])
async def test_a_bad_since_seq_is_refused_at_join(api, watched, since_seq):
    project_id, _, token, _ = watched
    client = await PhoenixClient.connect(api.server.ws_url, token)
    ref = await client.send(topic(project_id), "phx_join", {
        "access_token": token, "config": {"velocity": {"since_seq": since_seq}}}, join_ref="1")
    assert (await client.reply_to(ref)) == {"status": "error",
                                            "response": {"reason": "invalid_since_seq"}}
    await client.close()


async def test_a_since_seq_beyond_the_log_is_told_to_resync(api, watched):
    project_id, _, token, _ = watched
    client = await PhoenixClient.connect(api.server.ws_url, token)
    assert (await client.join(topic(project_id), since_seq=2**70))["status"] == "ok"
    system = await client.receive_until(lambda m: m["event"] == "system")
    assert system["payload"]["code"] == "resync"
    await client.close()


async def test_joins_to_foreign_or_malformed_topics_get_no_data(db, api, new_project, watched):
    project_id, owner, token, _ = watched
    foreign, _ = new_project()
    _, container_token = start_session(db, api.settings, project_id, owner)
    cases = [
        (token, topic(foreign), "not_a_member"),
        (token, f"realtime:realtime:project:{foreign}", "not_a_member"),
        (container_token, topic(foreign), "wrong_topic"),
        (token, "realtime:project:" + "-" * 36, "unknown_topic"),
        (token, f"realtime:project:{project_id}/../{foreign}", "unknown_topic"),
        (token, f"realtime:project:{str(foreign).upper()} ", "unknown_topic"),
        (token, "realtime:public:projects", "unknown_topic"),
    ]
    for credential, target, reason in cases:
        client = await PhoenixClient.connect(api.server.ws_url)
        assert (await client.join(target, token=credential)) == {
            "status": "error", "response": {"reason": reason}}, target
        # No subscription was made: the topic is unknown to this socket.
        ref = await client.send(target, "phx_leave", {})
        assert (await client.reply_to(ref))["response"] == {"reason": "unmatched topic"}
        await client.close()


BAD_REPORTS = {
    "applied_seq text": {"ready": True, "applied_seq": "abc"},
    "applied_seq negative": {"ready": True, "applied_seq": -1},
    "applied_seq past bigint": {"ready": True, "applied_seq": 2**63},
    "applied_seq a list": {"ready": True, "applied_seq": [1]},
    "lag_ms past integer": {"ready": True, "lag_ms": 10**12},
    "lag_ms text": {"ready": True, "lag_ms": "fast"},
    "hydrations negative": {"ready": True, "hydrations": -5},
    "ready an object": {"ready": {"yes": True}},
}


async def test_status_reports_that_do_not_fit_are_refused_and_record_nothing(
        db, api, new_project, new_user):
    editor = new_user("editor")
    project_id, owner = new_project(members=[(editor, "editor")])
    attacker_session, attacker_token = start_session(db, api.settings, project_id, owner)
    honest_session, honest_token = start_session(db, api.settings, project_id, editor)
    attacker = await PhoenixClient.connect(api.server.ws_url, attacker_token)
    assert (await attacker.join(topic(project_id)))["status"] == "ok"
    for case, report in BAD_REPORTS.items():
        ref = await attacker.send(topic(project_id), "velocity:status", report)
        answer = await attacker.reply_to(ref)
        assert answer["status"] == "error", case
        assert answer["response"]["reason"] == "invalid_status", case

    honest = await PhoenixClient.connect(api.server.ws_url, honest_token)
    assert (await honest.join(topic(project_id)))["status"] == "ok"
    ref = await honest.send(topic(project_id), "velocity:status",
                            {"ready": True, "applied_seq": 0, "lag_ms": 2, "hydrations": 1})
    assert (await honest.reply_to(ref))["status"] == "ok"

    def heartbeat(session_id):
        with db.transaction() as conn:
            return conn.execute("SELECT heartbeat_at, applied_seq, agent_status FROM"
                                " preview_sessions WHERE id = %s", (session_id,)).fetchone()

    wait_for(lambda: heartbeat(honest_session)[0], message="the honest report to be recorded")
    assert heartbeat(honest_session)[1] == 0
    assert heartbeat(attacker_session) == (None, None, None)
    await attacker.close()
    await honest.close()
