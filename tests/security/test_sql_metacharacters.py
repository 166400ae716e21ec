"""Attacker input: SQL metacharacters in every text parameter.

Each value is either stored and read back byte for byte (paths the rules accept, contents)
or refused with the contract's error quoting it as a literal (paths the rules refuse,
file types, function names, runtimes, topics); no statement but the intended one runs: the
other tables stay exactly as they were. Covered already: one quoted path and content
(tests/test_validation.py::test_sql_metacharacters_are_just_text).
"""

from __future__ import annotations

import json

import pytest

from velocity import accounts

from ..model.reference import reference_problem
from ..phoenix import PhoenixClient
from .http import post, rpc
from .state import database_fingerprint, unchanged

PAYLOADS = [
    "'; DROP TABLE project_files; --",
    "' OR '1'='1",
    "\" OR \"\"=\"",
    "$$; DROP TABLE projects; $$",
    "$tag$ DELETE FROM auth.users $tag$",
    "x'); DELETE FROM projects WHERE ('1'='1",
    "'; SELECT pg_sleep(30); --",
    "%s %(claims)s {0} {project_uuid}",
    "E'\\\\x27'",
    "1; COPY projects TO PROGRAM 'id'",
    "name' || (SELECT current_setting('request.jwt.claims')) || '",
    "/* comment */ -- tail",
    "\\'; DROP TABLE file_events; --",
    "::regclass;",
]


@pytest.fixture(scope="module")
def owned(db, api):
    owner = accounts.create_user(db, "sql-owner@example.test")
    project = str(accounts.create_project(db, "sql", owner, []))
    return project, api.user_headers(owner)


def other_tables(db) -> dict[str, str]:
    """Every table but those the intended write changes (its rows, its event, its seq and
    the writer's rate-limit bucket)."""
    written = ("public.project_files", "public.file_events", "public.projects",
               "internal.rate_limit_buckets")
    return {table: value for table, value in database_fingerprint(db).items()
            if table not in written}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_path_or_content_of_metacharacters_is_just_text(db, api, owned, payload):
    project, headers = owned
    before = other_tables(db)
    path = f"sql/{payload}.txt"
    reply = rpc(api, "upsert_project_file", {"project_uuid": project, "p_file_path": path,
                                             "p_content": payload}, headers)
    reason = reference_problem(path)
    if reason is None:
        assert reply.status_code == 200, reply.text
        assert (reply.json()["file_path"], reply.json()["content"]) == (path, payload)
        listed = rpc(api, "list_current_files", {"project_uuid": project}, headers).json()
        assert {"file_path": path, "content": payload}.items() <= next(
            f for f in listed if f["file_path"] == path).items()
    else:
        assert reply.status_code == 400
        assert json.loads(reply.json()["details"]) == {"path": path, "reason": reason}
    assert other_tables(db) == before


@pytest.mark.parametrize("payload", PAYLOADS)
def test_metacharacters_in_other_text_parameters_are_refused_as_literals(
        db, api, storage, owned, payload):
    project, headers = owned
    with unchanged(db, storage):
        file_type = rpc(api, "upsert_project_file", {
            "project_uuid": project, "p_file_path": "t.txt", "p_content": "x",
            "p_file_type": payload}, headers)
        assert file_type.status_code == 400 and file_type.json()["code"] == "22V03"
        assert json.loads(file_type.json()["details"])["file_type"] == payload

        bulk_type = rpc(api, "bulk_upsert_project_files", {"project_uuid": project, "files": [
            {"file_path": "t.txt", "content": "x", "file_type": payload}]}, headers)
        assert bulk_type.status_code == 400 and bulk_type.json()["code"] == "22V03"

        flag = rpc(api, "is_feature_enabled", {"flag_key": payload}, headers)
        assert flag.status_code == 200 and flag.json() is False

        project_id = rpc(api, "list_current_files", {"project_uuid": payload}, headers)
        assert project_id.status_code == 400 and project_id.json()["code"] == "22P02"

        function = api.client.post(f"/rest/v1/rpc/list_current_files{payload}",
                                   json={"project_uuid": project}, headers=headers)
        assert function.status_code in (404, 405), function.text

        runtime = post(api, "/sessions/start", json.dumps(
            {"projectId": project, "runtime": payload}).encode(), headers)
        assert runtime.status_code == 422 and "unknown runtime" in runtime.text


async def test_metacharacters_in_channel_topics_are_unknown_topics(db, api, owned):
    project, headers = owned
    token = headers["Authorization"].removeprefix("Bearer ")
    client = await PhoenixClient.connect(api.server.ws_url, token)
    with unchanged(db):
        for payload in PAYLOADS:
            joined = await client.join(f"realtime:project:{project}{payload}")
            assert joined == {"status": "error", "response": {"reason": "unknown_topic"}}
    await client.close()
