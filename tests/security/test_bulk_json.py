"""Attacker input: the JSON of bulk writes (`files`, `p_file_paths`), over HTTP as an owner.

Each malformed payload is refused with 400 and its SQLSTATE (22V04 malformed, 22V05 too
many, 22P02/22P05 PostgreSQL's own input errors, PGRST102 for JSON text that is not
standard), naming the item, and writes nothing: all or nothing, no event. Covered in
tests/test_bulk.py through the database already: not an array, non-object items, missing or
non-string file_path and content, an unknown action, "1" and 1.5 as expected_version, a
non-string file_type, a duplicate path, 5,001 items, a file/directory clash in one batch.
"""

from __future__ import annotations

import json

import pytest

from velocity import accounts

from .http import rpc
from .state import unchanged


@pytest.fixture(scope="module")
def owned(db, api):
    owner = accounts.create_user(db, "bulk-owner@example.test")
    project = str(accounts.create_project(db, "bulk", owner, []))
    headers = api.user_headers(owner)
    assert rpc(api, "upsert_project_file", {"project_uuid": project, "p_file_path": "keep.txt",
                                            "p_content": "kept"}, headers).status_code == 200
    return project, headers


def item(**fields) -> dict:
    return {"file_path": "new.txt", "content": "x", **fields}


FILES = {
    # case: (the files argument, expected code, text in the message)
    "a JSON string holding an array": (json.dumps([item()]), "22V04", "JSON array"),
    "an object": ({"0": item()}, "22V04", "JSON array"),
    "a number": (5, "22V04", "JSON array"),
    "null": (None, "22V04", "JSON array"),
    "nested arrays": ([[item()]], "22V04", "must be an object"),
    "negative expected_version": ([item(expected_version=-1)], "22V04", "expected_version"),
    "ten-digit expected_version": ([item(expected_version=10**10)], "22V04",
                                   "expected_version"),
    "exponent expected_version": ([item(expected_version=1e3)], "22V04", "expected_version"),
    "boolean expected_version": ([item(expected_version=True)], "22V04", "expected_version"),
    "null content": ([item(content=None)], "22V04", "content must be a string"),
    "action in capitals": ([item(action="DELETE")], "22V04", "action must be"),
    "action an array": ([item(action=["delete"])], "22V04", "action must be"),
    "NUL in a path": ([item(file_path="a\u0000b")], "22P05", "unsupported Unicode"),
    "a bad item after good ones": ([item(file_path="a.txt"), item(file_path="b.txt"),
                                    item(file_path="../c.txt")], "22V01", "files[2]: "),
    "a delete of a path that never was": ([item(file_path="a.txt"),
                                           {"file_path": "ghost.txt", "action": "delete"}],
                                          "P0002", "files[1]: "),
}


@pytest.mark.parametrize("case", list(FILES))
def test_a_malformed_bulk_payload_writes_nothing(db, api, storage, owned, case):
    project, headers = owned
    files, code, text = FILES[case]
    with unchanged(db, storage):
        reply = rpc(api, "bulk_upsert_project_files", {"project_uuid": project, "files": files},
                    headers)
    assert reply.status_code in (400, 404), reply.text
    assert reply.json()["code"] == code
    assert text in reply.json()["message"]


RAW_BODIES = {
    "nested past the depth limit": b'{"project_uuid": "P", "files": '
                                   + b"[" * 70 + b"]" * 70 + b"}",
    "nested past the recursion limit": b'{"project_uuid": "P", "files": '
                                       + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "NaN": b'{"project_uuid": "P", "files": [{"file_path": "a", "content": "x",'
           b' "expected_version": NaN}]}',
    "a lone surrogate": b'{"project_uuid": "P", "files": [{"file_path": "\\udfff",'
                        b' "content": "x"}]}',
}


@pytest.mark.parametrize("case", list(RAW_BODIES))
def test_json_text_that_is_not_standard_is_refused_before_the_database(db, api, storage, owned,
                                                                      case):
    project, headers = owned
    with unchanged(db, storage):
        reply = rpc(api, "bulk_upsert_project_files",
                    RAW_BODIES[case].replace(b'"P"', f'"{project}"'.encode()), headers)
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "PGRST102"


def test_too_many_items_over_http_is_refused_with_the_count(db, api, storage, owned):
    project, headers = owned
    files = [item(file_path=f"f{index}.txt") for index in range(5001)]
    with unchanged(db, storage):
        reply = rpc(api, "bulk_upsert_project_files", {"project_uuid": project, "files": files},
                    headers)
    assert reply.status_code == 400 and reply.json()["code"] == "22V05"
    assert json.loads(reply.json()["details"]) == {"count": 5001, "limit": 5000}


PATH_LISTS = {
    "not a list": ("keep.txt", "22P02"),
    "numbers": ([1, 2], "22P02"),
    "nested lists": ([["keep.txt"]], "22P02"),
    "null": (None, "22V04"),
    "a duplicate": (["keep.txt", "keep.txt"], "22V04"),
    "a path that never was": (["keep.txt", "ghost.txt"], "P0002"),
    "a traversal": (["keep.txt", "../../keep.txt"], "22V01"),
}


@pytest.mark.parametrize("case", list(PATH_LISTS))
def test_a_bad_bulk_delete_list_deletes_nothing(db, api, storage, owned, case):
    project, headers = owned
    paths, code = PATH_LISTS[case]
    with unchanged(db, storage):
        reply = rpc(api, "bulk_delete_project_files", {"project_uuid": project,
                                                       "p_file_paths": paths}, headers)
    assert reply.status_code in (400, 404), reply.text
    assert reply.json()["code"] == code
