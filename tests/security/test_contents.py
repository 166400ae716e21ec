"""Attacker input: file contents and file types, over HTTP as a signed-in owner.

Each is refused with 400 and the contract's SQLSTATE (or PGRST102 for a body that is not
valid JSON text), and leaves every table and the object store unchanged. Covered in
tests/test_validation.py through FileClient already: the size limit and its boundary, a
configurable limit, an unknown file type, NUL through FileClient.
"""

from __future__ import annotations

import json

import pytest

from velocity import accounts

from .http import rpc
from .state import unchanged

LIMIT = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def owned(db, api):
    owner = accounts.create_user(db, "content-owner@example.test")
    project = str(accounts.create_project(db, "contents", owner, []))
    assert rpc(api, "upsert_project_file", {"project_uuid": project, "p_file_path": "a.txt",
                                            "p_content": "original"},
               api.user_headers(owner)).status_code == 200
    return project, api.user_headers(owner)


def upsert(project: str, **overrides) -> dict:
    return {"project_uuid": project, "p_file_path": "a.txt", "p_content": "new", **overrides}


CASES = {
    # case: (arguments or a raw body, expected code, text the message or details holds)
    "over the size limit": (lambda p: upsert(p, p_content="x" * (LIMIT + 1)), "22V02",
                            "over the limit"),
    "multi-byte over the limit": (lambda p: upsert(p, p_content="\u6587" * (LIMIT // 3 + 1)),
                                  "22V02", "over the limit"),
    "NUL": (lambda p: upsert(p, p_content="a\u0000b"), "22P05", "\\u0000"),
    "missing content": (lambda p: upsert(p, p_content=None), "22004", "content is required"),
    "unknown file type": (lambda p: upsert(p, p_file_type="exe"), "22V03", "unknown file_type"),
    "file type with NUL": (lambda p: upsert(p, p_file_type="te\u0000xt"), "22P05", "\\u0000"),
    "lone surrogate": (lambda p: json.dumps(upsert(p, p_content="\udc00x")).encode(),
                       "PGRST102", "lone surrogate"),
    "invalid UTF-8": (lambda p: json.dumps(upsert(p, p_content="@")).encode().replace(
        b"@", b"\xff\xfe"), "PGRST102", "utf-8"),
    "NaN": (lambda p: json.dumps(upsert(p, p_content=float("nan"))).encode(), "PGRST102",
            "NaN"),
    "a number too large to be one": (lambda p: json.dumps(upsert(p, p_content="@")).encode()
                                     .replace(b'"@"', b"1e999"), "PGRST102", "out of range"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_content_is_refused_and_changes_nothing(db, api, storage, owned, case):
    project, headers = owned
    arguments, code, text = CASES[case]
    with unchanged(db, storage):
        reply = rpc(api, "upsert_project_file", arguments(project), headers)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["code"] == code
    assert text.lower() in f"{body['message']} {body['details']}".lower()


def test_bulk_content_is_checked_item_by_item(db, api, storage, owned):
    project, headers = owned
    files = [{"file_path": "ok.txt", "content": "fine"},
             {"file_path": "big.txt", "content": "x" * (LIMIT + 1)}]
    with unchanged(db, storage):
        reply = rpc(api, "bulk_upsert_project_files", {"project_uuid": project,
                                                       "files": files}, headers)
    assert reply.status_code == 400 and reply.json()["code"] == "22V02"
    assert reply.json()["message"].startswith("files[1]: ")
