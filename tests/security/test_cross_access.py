"""Attacker input: someone else's ids — projects, sessions, snapshot links — over HTTP.

A signed-in user reaches only their own projects and sessions: every file RPC on another
user's project is 403 (42501), another user's session cannot be read, stopped or started
for, and a signed link for one project's snapshot does not open another's. Nothing
changes. Covered already: row-level security on every table and every RPC through the
database (tests/test_access.py), viewer and stranger RPC calls (tests/test_api_rpc.py),
members-only sessions (tests/test_api_sessions.py), joins to foreign topics
(test_websocket_frames.py here, tests/test_gateway.py).
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from tasks import resources
from velocity import accounts
from velocity.db import Actor
from velocity.files import FileClient
from velocity.snapshots import build_snapshot

from .http import post, rpc
from .state import unchanged


@pytest.fixture(scope="module")
def world(db, api):
    """Alice owns project A (a file, a live session); Bob owns B; Carol views A."""
    alice = accounts.create_user(db, "alice@example.test")
    bob = accounts.create_user(db, "bob@example.test")
    carol = accounts.create_user(db, "carol@example.test")
    project_a = accounts.create_project(db, "A", alice, [(carol, "viewer")])
    project_b = accounts.create_project(db, "B", bob, [])
    service = FileClient(db, Actor.service())
    service.upsert(project_a, "secret.txt", "alice's")
    service.upsert(project_b, "mine.txt", "bob's")
    session_a = uuid.uuid4()
    with db.transaction() as conn:
        conn.execute("INSERT INTO preview_sessions (id, user_id, project_id, status)"
                     " VALUES (%s, %s, %s, 'active')", (session_a, alice, project_a))
    return {"alice": alice, "bob": bob, "carol": carol, "A": str(project_a),
            "B": str(project_b), "session_a": str(session_a)}


def every_rpc(project: str) -> dict[str, dict]:
    return {
        "upsert_project_file": {"project_uuid": project, "p_file_path": "x.txt",
                                "p_content": "x"},
        "delete_project_file": {"project_uuid": project, "p_file_path": "secret.txt"},
        "list_current_files": {"project_uuid": project},
        "bulk_upsert_project_files": {"project_uuid": project,
                                      "files": [{"file_path": "y.txt", "content": "y"}]},
        "bulk_delete_project_files": {"project_uuid": project, "p_file_paths": ["secret.txt"]},
        "file_history": {"project_uuid": project, "p_file_path": "secret.txt"},
        "restore_file_version": {"project_uuid": project, "p_file_path": "secret.txt",
                                 "p_version": 1},
        "events_since": {"project_uuid": project, "since_seq": 0},
    }


@pytest.mark.parametrize("function", list(every_rpc("p")))
def test_every_rpc_on_another_users_project_is_403(db, api, storage, world, function):
    headers = api.user_headers(world["bob"])
    with unchanged(db, storage):
        reply = rpc(api, function, every_rpc(world["A"])[function], headers)
    assert reply.status_code == 403, reply.text
    assert reply.json()["code"] == "42501" and "not a member" in reply.json()["message"]
    assert "alice's" not in reply.text


def test_another_users_session_cannot_be_read_stopped_or_started_for(db, api, storage, world):
    bob, carol = api.user_headers(world["bob"]), api.user_headers(world["carol"])
    session = world["session_a"]
    with unchanged(db, storage):
        read = api.client.get(f"/sessions/{session}/status", headers=bob)
        stopped_by_bob = post(api, "/sessions/stop", f'{{"sessionId": "{session}"}}'.encode(),
                              bob)
        stopped_by_viewer = post(api, "/sessions/stop",
                                 f'{{"sessionId": "{session}"}}'.encode(), carol)
        started = post(api, "/sessions/start", f'{{"projectId": "{world["A"]}"}}'.encode(), bob)
        for_alice = post(api, "/sessions/start", (
            f'{{"projectId": "{world["B"]}", "userId": "{world["alice"]}"}}').encode(), bob)
    for reply in (read, stopped_by_bob, stopped_by_viewer, started, for_alice):
        assert reply.status_code == 403, reply.text
        assert reply.json()["code"] == "permission_denied"
    assert "containerUrl" not in read.text


def test_a_signed_snapshot_link_opens_only_its_own_object(db, api, world):
    store = resources.object_store()
    built_a = build_snapshot(db, store, world["A"])
    built_b = build_snapshot(db, store, world["B"])
    link = urlsplit(store.signed_url(built_b.storage_key, 60))
    own = api.client.get(f"{link.path}?{link.query}")
    assert own.status_code == 200 and own.content == store.get(built_b.storage_key)
    for key in (built_a.storage_key, built_a.storage_key.replace(".zip", ".json"),
                f"project-snapshots/{world['A']}/../{world['B']}/x.zip"):
        forged = link.path.replace(built_b.storage_key, key)
        reply = api.client.get(f"{forged}?{link.query}")
        assert reply.status_code in (400, 403), (key, reply.status_code)
        assert b"alice's" not in reply.content
