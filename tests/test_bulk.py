"""Bulk writes: all or nothing, exactly one bulk:apply event, clear errors naming the item."""

from __future__ import annotations

import pytest

from velocity.db import Actor
from velocity.errors import BulkTooLarge, InvalidBulkPayload, InvalidPath, NotFound, PathConflict
from velocity.files import FileClient

from .helpers import file_state


@pytest.fixture
def project(new_project):
    return new_project()


@pytest.fixture
def files(db, project):
    return FileClient(db, Actor.user(project[1]))


def test_a_bulk_write_emits_exactly_one_event_listing_every_change(project, files):
    project_id, _ = project
    result = files.bulk_upsert(project_id, [
        {"file_path": f"src/f{i}.ts", "content": f"export const n = {i}"} for i in range(50)])
    assert (result.changed, result.unchanged) == (50, 0)
    events = files.events_since(project_id, 0)
    assert [e.type for e in events] == ["bulk:apply"]
    assert events[0].seq == result.seq == 1
    listed = events[0].payload["files"]
    assert [item["file_path"] for item in listed] == [f"src/f{i}.ts" for i in range(50)]
    assert listed[7]["content"] == "export const n = 7"
    assert len(files.list_current(project_id)) == 50


def test_unchanged_items_are_reported_and_left_out_of_the_event(project, files):
    project_id, _ = project
    files.bulk_upsert(project_id, [{"file_path": "a", "content": "1"},
                                   {"file_path": "b", "content": "2"}])
    result = files.bulk_upsert(project_id, [{"file_path": "a", "content": "1"},
                                            {"file_path": "b", "content": "3"}])
    assert (result.changed, result.unchanged) == (1, 1)
    assert [f["file_path"] for f in files.events_since(project_id, 1)[0].payload["files"]] == ["b"]
    nothing = files.bulk_upsert(project_id, [{"file_path": "a", "content": "1"}])
    assert nothing.seq is None and len(files.events_since(project_id, 0)) == 2


def test_one_bad_item_writes_nothing_and_emits_nothing(db, project, files):
    project_id, _ = project
    files.upsert(project_id, "keep.txt", "kept")
    before = file_state(db, project_id)
    with pytest.raises(InvalidPath, match=r"files\[2\]: invalid path '\.\./escape'"):
        files.bulk_upsert(project_id, [{"file_path": "ok1.txt", "content": "x"},
                                       {"file_path": "keep.txt", "content": "changed"},
                                       {"file_path": "../escape", "content": "x"}])
    assert file_state(db, project_id) == before


def test_a_rename_is_a_delete_and_a_create_in_one_event(project, files):
    project_id, _ = project
    files.upsert(project_id, "old/name.ts", "body")
    files.bulk_upsert(project_id, [{"file_path": "old/name.ts", "action": "delete"},
                                   {"file_path": "old", "content": "now a file"}])
    (event,) = files.events_since(project_id, 1)
    assert [(f["action"], f["file_path"]) for f in event.payload["files"]] == [
        ("delete", "old/name.ts"), ("update", "old")]
    assert {f.file_path: f.content for f in files.list_current(project_id)} == {"old": "now a file"}


def test_bulk_delete(project, files):
    project_id, _ = project
    files.bulk_upsert(project_id, [{"file_path": p, "content": p} for p in ("x", "y", "z")])
    result = files.bulk_delete(project_id, ["x", "z"])
    assert result.changed == 2
    assert [f.file_path for f in files.list_current(project_id)] == ["y"]
    with pytest.raises(NotFound, match="files\\[0\\]"):
        files.bulk_delete(project_id, ["never"])


def test_file_and_directory_clash_inside_one_batch_is_refused(db, project, files):
    project_id, _ = project
    before = file_state(db, project_id)
    with pytest.raises(PathConflict, match=r"files\[1\]"):
        files.bulk_upsert(project_id, [{"file_path": "a", "content": "1"},
                                       {"file_path": "a/b", "content": "2"}])
    assert file_state(db, project_id) == before


@pytest.mark.parametrize("payload, message", [
    ({"not": "an array"}, "files must be a JSON array"),
    (["just a string"], r"files\[0\]: must be an object"),
    ([{"content": "x"}], r"files\[0\]: file_path must be a string"),
    ([{"file_path": 5, "content": "x"}], r"files\[0\]: file_path must be a string"),
    ([{"file_path": "a"}], r"files\[0\]: content must be a string"),
    ([{"file_path": "a", "content": 1}], r"files\[0\]: content must be a string"),
    ([{"file_path": "a", "content": "x", "action": "rename"}], "action must be"),
    ([{"file_path": "a", "content": "x", "expected_version": "1"}], "expected_version must be"),
    ([{"file_path": "a", "content": "x", "expected_version": 1.5}], "expected_version must be"),
    ([{"file_path": "a", "content": "x", "file_type": 3}], "file_type must be a string"),
    ([{"file_path": "a", "content": "x"}, {"file_path": "a", "content": "y"}],
     "appears more than once"),
])
def test_malformed_payloads_are_refused_with_the_reason(db, project, files, payload, message):
    project_id, _ = project
    before = file_state(db, project_id)
    from psycopg.types.json import Jsonb

    with pytest.raises(InvalidBulkPayload, match=message):
        files.db.call(files.actor, "bulk_upsert_project_files",
                      {"project_uuid": str(project_id), "files": Jsonb(payload)})
    assert file_state(db, project_id) == before


def test_a_bulk_over_the_limit_is_refused(db, project, files):
    project_id, _ = project
    before = file_state(db, project_id)
    with pytest.raises(BulkTooLarge, match="at most 5000 files, got 5001"):
        files.bulk_upsert(project_id, [{"file_path": f"f{i}", "content": ""} for i in range(5001)])
    assert file_state(db, project_id) == before


def test_new_paths_in_a_large_project_probe_only_their_ancestors(db, new_project):
    """The file-versus-directory check looks up each ancestor by its key, whatever the
    planner believes of the project's size. Statistics gathered while the project was empty
    once made it scan every current file of the project for each new path (a bulk load was
    quadratic): here each new path must read a handful of index entries, not thousands."""
    project_id, owner = new_project()
    with db.transaction() as conn:
        conn.execute("ANALYZE project_files")  # while this project holds nothing
    service = FileClient(db, Actor.service())
    service.bulk_upsert(project_id, [{"file_path": f"src/c{i % 20}/f{i}.ts", "content": "x"}
                                     for i in range(2_000)])
    with db.pool.connection() as conn, conn.transaction():
        def index_entries_read() -> int:
            return conn.execute(  # this transaction's reads of the index, not yet flushed
                "SELECT pg_stat_get_xact_tuples_returned("
                "'project_files_one_current_per_path'::regclass)").fetchone()[0]

        reads = []
        for i in range(8):  # past the five custom plans, onto the cached generic one
            before = index_entries_read()
            conn.execute("SELECT upsert_project_file(%s, %s, 'y')",
                         (project_id, f"src/c1/new{i}.ts"))
            reads.append(index_entries_read() - before)
    assert max(reads) < 20, reads
