"""`POST /rest/v1/rpc/{function}` over real HTTP: PostgREST's shapes, codes and statuses,
acting as the bearer's user against real row-level security."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest

from velocity.tokens import mint_user_token

from .api_support import Api, running_api
from .helpers import file_state


@pytest.fixture
def api(configured, monkeypatch):
    with running_api(monkeypatch) as running:
        yield running


def rpc(api: Api, function: str, args: dict | None, headers: dict):
    return api.client.post(f"/rest/v1/rpc/{function}", json=args, headers=headers)


def test_upsert_list_delete_as_a_user(api, new_project):
    project_id, owner = new_project()
    me = api.user_headers(owner)
    created = rpc(api, "upsert_project_file", {
        "project_uuid": str(project_id), "p_file_path": "src/app.ts",
        "p_content": "export {}"}, me)
    assert created.status_code == 200, created.text
    row = created.json()
    assert isinstance(row, dict)
    assert (row["file_path"], row["version"], row["file_type"]) == ("src/app.ts", 1, "typescript")
    assert row["last_modified_by"] == str(owner) and len(row["content_hash"]) == 64

    again = rpc(api, "upsert_project_file", {
        "project_uuid": str(project_id), "p_file_path": "src/app.ts", "p_content": "export {1}",
        "p_file_type": None, "expected_version": 1}, me)
    assert again.status_code == 200 and again.json()["version"] == 2

    listed = rpc(api, "list_current_files", {"project_uuid": str(project_id)}, me)
    assert listed.status_code == 200
    assert [(f["file_path"], f["version"], f["content"]) for f in listed.json()] == [
        ("src/app.ts", 2, "export {1}")]

    history = rpc(api, "file_history", {"project_uuid": str(project_id),
                                        "p_file_path": "src/app.ts"}, me)
    assert [v["version"] for v in history.json()] == [2, 1]

    deleted = rpc(api, "delete_project_file", {"project_uuid": str(project_id),
                                               "p_file_path": "src/app.ts"}, me)
    assert deleted.status_code == 200 and deleted.json()["is_deleted"] is True
    assert rpc(api, "list_current_files", {"project_uuid": str(project_id)}, me).json() == []

    events = rpc(api, "events_since", {"project_uuid": str(project_id), "since_seq": 0}, me)
    assert [e["type"] for e in events.json()] == ["file:update", "file:update", "file:delete"]
    assert [e["seq"] for e in events.json()] == [1, 2, 3]


def test_bulk_calls_and_scalars_come_back_as_values(api, new_project):
    project_id, owner = new_project()
    me = api.user_headers(owner)
    bulk = rpc(api, "bulk_upsert_project_files", {"project_uuid": str(project_id), "files": [
        {"file_path": "a.txt", "content": "a"}, {"file_path": "b.txt", "content": "b"}]}, me)
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["changed"] == 2 and bulk.json()["success"] is True
    removed = rpc(api, "bulk_delete_project_files", {"project_uuid": str(project_id),
                                                     "p_file_paths": ["a.txt"]}, me)
    assert removed.status_code == 200 and removed.json()["changed"] == 1
    flag = rpc(api, "is_feature_enabled", {"flag_key": "FSYNC_USE_RPC",
                                           "user_id": str(owner)}, me)
    assert flag.status_code == 200 and flag.json() is False
    restored = rpc(api, "restore_file_version", {"project_uuid": str(project_id),
                                                 "p_file_path": "a.txt", "p_version": 1}, me)
    assert restored.status_code == 200 and restored.json()["version"] == 3


def test_a_stale_expected_version_is_409_23V02(api, db, new_project):
    project_id, owner = new_project()
    me = api.user_headers(owner)
    args = {"project_uuid": str(project_id), "p_file_path": "x.md", "p_content": "1"}
    assert rpc(api, "upsert_project_file", args, me).status_code == 200
    before = file_state(db, project_id)
    stale = rpc(api, "upsert_project_file", {**args, "p_content": "2", "expected_version": 7},
                me)
    assert stale.status_code == 409
    body = stale.json()
    assert set(body) == {"code", "message", "details", "hint"}
    assert body["code"] == "23V02"
    assert json.loads(body["details"])["current_version"] == 1
    assert file_state(db, project_id) == before


def test_viewers_and_strangers_are_refused_403(api, db, new_project, new_user):
    viewer, stranger = new_user("viewer"), new_user("stranger")
    project_id, _ = new_project(members=[(viewer, "viewer")])
    args = {"project_uuid": str(project_id), "p_file_path": "x.md", "p_content": "1"}
    before = file_state(db, project_id)
    as_viewer = rpc(api, "upsert_project_file", args, api.user_headers(viewer))
    assert as_viewer.status_code == 403 and as_viewer.json()["code"] == "42501"
    assert rpc(api, "list_current_files", {"project_uuid": str(project_id)},
               api.user_headers(viewer)).status_code == 200
    for function, call_args in [("upsert_project_file", args),
                                ("list_current_files", {"project_uuid": str(project_id)})]:
        refused = rpc(api, function, call_args, api.user_headers(stranger))
        assert refused.status_code == 403 and refused.json()["code"] == "42501", function
    assert file_state(db, project_id) == before


def test_no_token_or_a_bad_one_is_401(api, new_project):
    project_id, owner = new_project()
    args = {"project_uuid": str(project_id)}
    anonymous = rpc(api, "list_current_files", args, {"apikey": "anon-key"})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "42501"
    assert "list_current_files" in anonymous.json()["message"]

    claims = {"sub": str(owner), "role": "authenticated", "aud": "authenticated",
              "exp": int(time.time()) + 600}
    forged = jwt.encode(claims, "a guessed secret, long enough for HS256", algorithm="HS256")
    refused = rpc(api, "list_current_files", args, {"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 401 and refused.json()["code"] == "PGRST301"
    assert "bad_signature" in refused.json()["message"]
    assert "invalid_token" in refused.headers["www-authenticate"]

    expired = mint_user_token(owner, 60, api.settings, now=int(time.time()) - 3600)
    late = rpc(api, "list_current_files", args, {"Authorization": f"Bearer {expired}"})
    assert late.status_code == 401 and late.json()["code"] == "PGRST303"


def test_the_service_key_acts_as_the_service(api, new_project):
    project_id, _ = new_project()
    service = api.service_headers()
    written = rpc(api, "upsert_project_file", {"project_uuid": str(project_id),
                                               "p_file_path": "s.txt", "p_content": "svc"},
                  service)
    assert written.status_code == 200, written.text
    bearer = {"Authorization": f"Bearer {api.settings.api_service_key()}"}
    listed = rpc(api, "list_current_files", {"project_uuid": str(project_id)}, bearer)
    assert [f["file_path"] for f in listed.json()] == ["s.txt"]
    missing = rpc(api, "list_current_files", {"project_uuid": str(uuid.uuid4())}, service)
    assert missing.status_code == 404 and missing.json()["code"] == "P0002"


@pytest.fixture
def tight_limit(db):
    with db.transaction() as conn:
        conn.execute("UPDATE internal.config SET rate_limit_burst = 3,"
                     " rate_limit_per_second = 0.5")
    yield
    with db.transaction() as conn:
        conn.execute("UPDATE internal.config SET rate_limit_burst = 100,"
                     " rate_limit_per_second = 20")


def test_the_rate_limit_is_429_with_retry_after(api, new_project, tight_limit):
    project_id, owner = new_project()
    me = api.user_headers(owner)
    statuses = [rpc(api, "upsert_project_file", {
        "project_uuid": str(project_id), "p_file_path": "a.txt", "p_content": str(n)},
        me).status_code for n in range(3)]
    assert statuses == [200, 200, 200]
    limited = rpc(api, "upsert_project_file", {"project_uuid": str(project_id),
                                               "p_file_path": "a.txt", "p_content": "over"}, me)
    assert limited.status_code == 429
    assert limited.json()["code"] == "53V01"
    assert 1 <= int(limited.headers["retry-after"]) <= 3


def test_unknown_functions_and_arguments_are_404_pgrst202(api, new_project):
    project_id, owner = new_project()
    me = api.user_headers(owner)
    unknown = rpc(api, "drop_everything", {}, me)
    assert unknown.status_code == 404 and unknown.json()["code"] == "PGRST202"
    # A function outside the file RPCs is not reachable, even though it exists.
    internal = rpc(api, "upsert_project_binary_file", {"project_uuid": str(project_id)}, me)
    assert internal.status_code == 404 and internal.json()["code"] == "PGRST202"
    missing_arg = rpc(api, "upsert_project_file", {"project_uuid": str(project_id),
                                                   "p_file_path": "a.txt"}, me)
    assert missing_arg.status_code == 404 and missing_arg.json()["code"] == "PGRST202"
    extra_arg = rpc(api, "list_current_files", {"project_uuid": str(project_id), "x": 1}, me)
    assert extra_arg.status_code == 404


def test_bad_input_is_400(api, new_project):
    project_id, owner = new_project()
    me = api.user_headers(owner)
    bad_json = api.client.post("/rest/v1/rpc/list_current_files", content=b"{nope",
                               headers={**me, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "PGRST102"
    not_uuid = rpc(api, "list_current_files", {"project_uuid": "nope"}, me)
    assert not_uuid.status_code == 400 and not_uuid.json()["code"] == "22P02"
    bad_path = rpc(api, "upsert_project_file", {"project_uuid": str(project_id),
                                                "p_file_path": "../etc/passwd",
                                                "p_content": "x"}, me)
    assert bad_path.status_code == 400 and bad_path.json()["code"] == "22V01"
    wrong_type = rpc(api, "upsert_project_file", {"project_uuid": str(project_id),
                                                  "p_file_path": "a", "p_content": "x",
                                                  "expected_version": "one"}, me)
    assert wrong_type.status_code == 400 and wrong_type.json()["code"] == "22P02"
    nul = rpc(api, "upsert_project_file", {"project_uuid": str(project_id),
                                           "p_file_path": "a", "p_content": "x\u0000y"}, me)
    assert nul.status_code == 400 and nul.json()["code"] == "22P05"


def test_errors_are_counted_by_code(api, new_project):
    project_id, owner = new_project()
    rpc(api, "drop_everything", {}, api.user_headers(owner))
    rpc(api, "list_current_files", {"project_uuid": str(project_id)}, {})
    text = api.client.get("/metrics").text
    assert 'velocity_rpc_errors_total{code="PGRST202"} 1.0' in text
    assert 'velocity_rpc_errors_total{code="42501"} 1.0' in text
    assert 'velocity_rpc_requests_total{function="unknown"} 1.0' in text
    assert 'velocity_rpc_requests_total{function="list_current_files"} 1.0' in text
