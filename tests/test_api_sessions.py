"""Sessions over real HTTP: the API opens the row, provision-session runs in process against a
real Prefect server, the agent starts through the process runtime and reports over the gateway,
and the status endpoint shows it; stop ends it."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from velocity.db import Actor
from velocity.files import FileClient

from .api_support import Api, running_api
from .helpers import wait_for

SITE = {"index.html": "<h1>hello</h1>", "main.js": "console.log(1)"}


@pytest.fixture
def api(prefect_server, configured, monkeypatch):
    with running_api(monkeypatch) as running:
        yield running


@pytest.fixture
def project(db, new_project):
    project_id, owner = new_project()
    FileClient(db, Actor.service()).bulk_upsert(
        project_id, [{"file_path": path, "content": content} for path, content in SITE.items()])
    return project_id, owner


def status_of(api: Api, session_id: str, headers: dict) -> dict:
    reply = api.client.get(f"/sessions/{session_id}/status", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_for_status(api: Api, session_id: str, headers: dict, wanted: set[str],
                    timeout: float = 60) -> dict:
    def settled() -> dict | None:
        current = status_of(api, session_id, headers)
        return current if current["status"] in wanted else None

    return wait_for(settled, timeout=timeout, interval=0.1,
                    message=f"session {session_id} to become {' or '.join(sorted(wanted))}")


def test_start_becomes_active_then_stop_ends_it(api, project):
    project_id, owner = project
    me = api.user_headers(owner)
    started = api.client.post("/sessions/start", json={"projectId": str(project_id)},
                              headers=me)
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] == "creating" and body["flowRunId"]
    assert body["statusUrl"].endswith(f"/sessions/{body['sessionId']}/status")

    again = api.client.post("/sessions/start", json={"projectId": str(project_id)}, headers=me)
    assert again.status_code == 200
    assert again.json()["sessionId"] == body["sessionId"]
    assert again.json()["flowRunId"] == body["flowRunId"]

    active = wait_for_status(api, body["sessionId"], me, {"active", "error"})
    assert active["status"] == "active", active
    assert active["containerUrl"] and active["containerId"] and active["error"] is None
    assert active["flowRunId"] == body["flowRunId"]

    metrics = api.client.get("/metrics").text
    assert "velocity_session_start_seconds_count 1.0" in metrics
    assert "velocity_connected_agents 1.0" in metrics

    stopped = api.client.post("/sessions/stop", json={"sessionId": body["sessionId"]},
                              headers=me)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "ok" and stopped.json()["flowRunId"]
    assert wait_for_status(api, body["sessionId"], me, {"ended"})["status"] == "ended"
    again = api.client.post("/sessions/stop", json={"sessionId": body["sessionId"]},
                            headers=me)
    assert again.status_code == 200 and again.json()["flowRunId"] is None


def test_members_only(api, project, new_user, db):
    project_id, owner = project
    stranger = new_user("stranger")
    refused = api.client.post("/sessions/start", json={"projectId": str(project_id)},
                              headers=api.user_headers(stranger))
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"

    # The service starts one for the owner; a stranger can neither read nor stop it.
    started = api.client.post("/sessions/start", headers=api.service_headers(),
                              json={"projectId": str(project_id), "userId": str(owner)})
    assert started.status_code == 202, started.text
    session_id = started.json()["sessionId"]
    peek = api.client.get(f"/sessions/{session_id}/status", headers=api.user_headers(stranger))
    assert peek.status_code == 403
    stop = api.client.post("/sessions/stop", json={"sessionId": session_id},
                           headers=api.user_headers(stranger))
    assert stop.status_code == 403
    assert status_of(api, session_id, api.service_headers())["status"] in ("creating", "active")
    wait_for_status(api, session_id, api.service_headers(), {"active", "error"})
    api.client.post("/sessions/stop", json={"sessionId": session_id},
                    headers=api.service_headers())
    wait_for_status(api, session_id, api.service_headers(), {"ended"})


def test_missing_or_forged_tokens_are_401(api, project):
    project_id, owner = project
    body = {"projectId": str(project_id)}
    missing = api.client.post("/sessions/start", json=body)
    assert missing.status_code == 401 and missing.json()["reason"] == "missing_token"
    claims = {"sub": str(owner), "role": "authenticated", "aud": "authenticated",
              "exp": int(time.time()) + 600}
    forged = jwt.encode(claims, "a guessed secret, long enough for HS256", algorithm="HS256")
    refused = api.client.post("/sessions/start", json=body,
                              headers={"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 401 and refused.json()["reason"] == "bad_signature"
    anon_key = api.client.post("/sessions/start", json=body, headers={"apikey": "anon"})
    assert anon_key.status_code == 401
    status = api.client.get(f"/sessions/{uuid.uuid4()}/status")
    assert status.status_code == 401


def test_bad_bodies_are_422_naming_the_field(api, project):
    project_id, owner = project
    me = api.user_headers(owner)
    not_uuid = api.client.post("/sessions/start", json={"projectId": "seven"}, headers=me)
    assert not_uuid.status_code == 422
    assert [e["field"] for e in not_uuid.json()["errors"]] == ["projectId"]
    runtime = api.client.post("/sessions/start", headers=me,
                              json={"projectId": str(project_id), "runtime": "mainframe"})
    assert runtime.status_code == 422 and runtime.json()["errors"][0]["field"] == "runtime"
    no_user = api.client.post("/sessions/start", json={"projectId": str(project_id)},
                              headers=api.service_headers())
    assert no_user.status_code == 422 and no_user.json()["errors"][0]["field"] == "userId"
    unknown = api.client.get(f"/sessions/{uuid.uuid4()}/status", headers=me)
    assert unknown.status_code == 404
