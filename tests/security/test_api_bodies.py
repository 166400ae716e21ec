"""Attacker input: request bodies, path parameters, routes and methods of the HTTP API.

Sessions endpoints answer a body that does not fit with 422 naming the field (or 400 for a
body FastAPI cannot parse), every failure in the API's `{"code", "message"}` shape, and no
session row is opened. The RPC endpoint answers PostgREST's codes. Nothing changes anywhere.
Covered already: missing/malformed fields of sessions bodies (tests/test_api_sessions.py),
`{nope`, a non-uuid project, a wrongly typed expected_version and NUL over RPC
(tests/test_api_rpc.py); generated bodies never give a 5xx (test_openapi_fuzz.py here).
"""

from __future__ import annotations

import json
import uuid

import pytest

from velocity import accounts

from .http import deep_json, post, rpc
from .state import unchanged


@pytest.fixture(scope="module")
def owned(db, api):
    owner = accounts.create_user(db, "bodies-owner@example.test")
    project = str(accounts.create_project(db, "bodies", owner, []))
    return project, api.user_headers(owner)


SESSION_BODIES = {
    # case: (path, body, expected status, the field or text named)
    "deep JSON": ("/sessions/start", deep_json(100_000), 400, "parsing the body"),
    "not JSON": ("/sessions/start", b"projectId=1", 422, "JSON decode error"),
    "an array": ("/sessions/start", b"[]", 422, "valid dictionary"),
    "projectId a number": ("/sessions/start", b'{"projectId": 12}', 422, "projectId"),
    "projectId with SQL": ("/sessions/start",
                           b'{"projectId": "1\' OR \'1\'=\'1"}', 422, "projectId"),
    "runtime a path": ("/sessions/start", b'{"projectId": "P", "runtime": "../../bin/sh"}',
                       422, "unknown runtime"),
    "runtime a lone surrogate": ("/sessions/start",
                                 b'{"projectId": "P", "runtime": "\\ud800"}', 422, "runtime"),
    "runtime NaN": ("/sessions/start", b'{"projectId": "P", "runtime": NaN}', 422, "runtime"),
    "sessionId a list": ("/sessions/stop", b'{"sessionId": ["x"]}', 422, "sessionId"),
    "sessionId missing": ("/sessions/stop", b"{}", 422, "sessionId"),
}


@pytest.mark.parametrize("case", list(SESSION_BODIES))
def test_a_sessions_body_that_does_not_fit_opens_no_session(db, api, storage, owned, case):
    project, headers = owned
    path, body, status, named = SESSION_BODIES[case]
    with unchanged(db, storage):
        reply = post(api, path, body.replace(b'"P"', f'"{project}"'.encode()), headers)
    assert reply.status_code == status, reply.text
    answer = reply.json()
    assert set(answer) >= {"code", "message"}, answer
    assert named in json.dumps(answer), answer


def test_another_users_id_in_a_start_body_is_refused(db, api, storage, owned):
    project, headers = owned
    with unchanged(db, storage):
        reply = post(api, "/sessions/start", json.dumps(
            {"projectId": project, "userId": str(uuid.uuid4())}).encode(), headers)
    assert reply.status_code == 403 and reply.json()["code"] == "permission_denied"


@pytest.mark.parametrize("path", ["/sessions/not-a-uuid/status", "/sessions/%00/status",
                                  "/sessions/..%2f..%2fetc%2fpasswd/status"])
def test_a_malformed_session_id_in_the_path_is_refused(db, api, owned, path):
    _, headers = owned
    with unchanged(db):
        reply = api.client.get(path, headers=headers)
    assert reply.status_code in (404, 422), reply.text
    assert set(reply.json()) >= {"code", "message"}


def test_an_unknown_session_is_404(db, api, owned):
    _, headers = owned
    with unchanged(db):
        reply = api.client.get(f"/sessions/{uuid.uuid4()}/status", headers=headers)
        stop = post(api, "/sessions/stop", json.dumps({"sessionId": str(uuid.uuid4())}).encode(),
                    headers)
    assert reply.status_code == 404 and reply.json()["code"] == "not_found"
    assert stop.status_code == 404 and stop.json()["code"] == "not_found"


def test_unknown_routes_and_methods_answer_in_the_api_shape(api, owned):
    _, headers = owned
    missing = api.client.get("/admin/drop", headers=headers)
    assert missing.status_code == 404
    assert missing.json() == {"code": "not_found", "message": "Not Found"}
    wrong_method = api.client.delete("/sessions/start", headers=headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]


RPC_ARGUMENTS = {
    # case: (function, arguments or raw body, expected code)
    "expected_version past integer": ("upsert_project_file", lambda p: {
        "project_uuid": p, "p_file_path": "a", "p_content": "x", "expected_version": 2**31},
        "22003"),
    "since_seq past bigint": ("events_since", lambda p: {"project_uuid": p,
                                                         "since_seq": 2**63}, "22003"),
    "max_rows far past integer": ("events_since", lambda p: {
        "project_uuid": p, "since_seq": 0, "max_rows": 10**30}, "22003"),
    "max_rows out of its range": ("events_since", lambda p: {
        "project_uuid": p, "since_seq": 0, "max_rows": 10**6}, "22023"),
    "negative since_seq": ("events_since", lambda p: {"project_uuid": p, "since_seq": -1},
                           "22023"),
    "p_version a float": ("restore_file_version", lambda p: {
        "project_uuid": p, "p_file_path": "a", "p_version": 1.5}, "22P02"),
    "project_uuid a number": ("list_current_files", lambda p: {"project_uuid": 7}, "22P02"),
    "project_uuid an object": ("list_current_files", lambda p: {"project_uuid": {"id": p}},
                               "22P02"),
    "user_id not a uuid": ("is_feature_enabled", lambda p: {"flag_key": "FSYNC_USE_RPC",
                                                            "user_id": "me"}, "22P02"),
    "a JSON array body": ("list_current_files", lambda p: b"[1]", "PGRST102"),
    "a JSON string body": ("list_current_files", lambda p: b'"x"', "PGRST102"),
    "deep JSON": ("list_current_files", lambda p: deep_json(100_000), "PGRST102"),
    "NaN": ("list_current_files", lambda p: b'{"project_uuid": NaN}', "PGRST102"),
    "Infinity": ("events_since", lambda p: b'{"project_uuid": "%s", "since_seq": Infinity}'
                 % p.encode(), "PGRST102"),
    "invalid UTF-8": ("list_current_files", lambda p: b'{"project_uuid": "\xc3\x28"}',
                      "PGRST102"),
}


@pytest.mark.parametrize("case", list(RPC_ARGUMENTS))
def test_rpc_arguments_that_do_not_fit_are_400_with_a_code(db, api, storage, owned, case):
    project, headers = owned
    function, arguments, code = RPC_ARGUMENTS[case]
    with unchanged(db, storage):
        reply = rpc(api, function, arguments(project), headers)
    assert reply.status_code == 400, reply.text
    assert set(reply.json()) == {"code", "message", "details", "hint"}
    assert reply.json()["code"] == code
