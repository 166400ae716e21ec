"""Attacker input: file paths, at every RPC that takes one, over HTTP as a signed-in owner.

Each bad path is refused with 400, SQLSTATE 22V01 and its reason, and leaves every table and
the object store unchanged. Paths the database accepts, however odd, hydrate into a preview
(the agent's extractor takes every one of them). The generated-string property test of the
same rules is tests/model/test_path_rules.py; the agent's own refusals of paths arriving in
events are tests/test_agent_apply.py (test_every_malicious_path_is_refused_…).
"""

from __future__ import annotations

import json

import pytest

from agent.archive import extract_snapshot
from velocity.db import Actor
from velocity.files import FileClient
from velocity.snapshots import build_snapshot
from velocity.storage import LocalStore

from .http import rpc
from .state import tree_fingerprint, unchanged

BAD_PATHS = {
    "empty": "",
    "too_long": "a/" * 512 + "bc",
    "absolute": "/etc/passwd",
    "drive_letter": "C:/Windows/win.ini",
    "backslash": "..\\..\\etc\\passwd",
    "control_character": "a\u0085b",  # NEL, a C1 control some tools read as a line break
    "trailing_slash": "src/",
    "empty_segment": "src//app.ts",
    "dot_segment": "src/../../../etc/passwd",
    "too_deep": "/".join(["d"] * 33),
    "segment_too_long": "src/" + "\u6587" * 86,  # 258 bytes, 86 characters
}
# Decoded, these are traversals; literally they are ordinary names, stored as written.
ODD_BUT_VALID = ["ab:c", "x/c:y", "%2e%2e/%2fetc", "..a/b..", ".env", "\uff0e\uff0e/x",
                 "\u2215etc\u2215passwd", "\u202etxt.exe", "caf\xe9", "cafe\u0301",
                 "\ufeffbom", "\U0001f600/\U0001f600.txt", "a b/c d", "\xe9" * 127 + "e"]


def calls(project: str, path: str) -> dict[str, dict]:
    """Every RPC that takes a path, with otherwise valid arguments."""
    return {
        "upsert_project_file": {"project_uuid": project, "p_file_path": path, "p_content": "x"},
        "delete_project_file": {"project_uuid": project, "p_file_path": path},
        "file_history": {"project_uuid": project, "p_file_path": path},
        "restore_file_version": {"project_uuid": project, "p_file_path": path, "p_version": 1},
        "bulk_upsert_project_files": {"project_uuid": project,
                                      "files": [{"file_path": path, "content": "x"}]},
        "bulk_delete_project_files": {"project_uuid": project, "p_file_paths": [path]},
    }


@pytest.fixture(scope="module")
def owned(db, api):
    from velocity import accounts

    owner = accounts.create_user(db, "path-owner@example.test")
    project = accounts.create_project(db, "paths", owner, [])
    FileClient(db, Actor.service()).upsert(project, "index.html", "<h1>hi</h1>")
    return str(project), api.user_headers(owner)


@pytest.mark.parametrize("function", list(calls("p", "x")))
@pytest.mark.parametrize("reason", list(BAD_PATHS))
def test_a_bad_path_is_refused_with_its_reason(db, api, storage, owned, function, reason):
    project, headers = owned
    with unchanged(db, storage):
        reply = rpc(api, function, calls(project, BAD_PATHS[reason])[function], headers)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["code"] == "22V01"
    assert json.loads(body["details"])["reason"] == reason
    assert reason.replace("_", " ") in body["message"]
    if function.startswith("bulk_"):
        assert body["message"].startswith("files[0]: ")


def test_a_lone_surrogate_in_a_path_is_400_not_a_crash(db, api, storage, owned):
    project, headers = owned
    body = json.dumps({"project_uuid": project, "p_file_path": "a\ud800.txt",
                       "p_content": "x"}).encode()  # json.dumps writes the \\ud800 escape
    with unchanged(db, storage):
        reply = rpc(api, "upsert_project_file", body, headers)
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "PGRST102"
    assert "lone surrogate" in reply.json()["details"]


def test_odd_but_valid_paths_are_kept_verbatim_and_hydrate(db, api, owned, tmp_path):
    project, headers = owned
    files = [{"file_path": path, "content": path} for path in ODD_BUT_VALID]
    written = rpc(api, "bulk_upsert_project_files", {"project_uuid": project, "files": files},
                  headers)
    assert written.status_code == 200, written.text
    listed = rpc(api, "list_current_files", {"project_uuid": project}, headers).json()
    assert {f["file_path"] for f in listed} == {*ODD_BUT_VALID, "index.html"}

    store = LocalStore(tmp_path / "store", "http://127.0.0.1:9", "secret")
    snapshot = build_snapshot(db, store, project)
    target = tmp_path / "preview"
    extract_snapshot(store.path_of(snapshot.storage_key), target, snapshot.sha256)
    on_disk = {path: digest for path, digest in tree_fingerprint(target).items()
               if digest != "dir"}
    assert set(on_disk) == {*ODD_BUT_VALID, "index.html"}
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["preview", "store"]
