"""The single-file RPCs: versions, current flags, dedupe, conflicts, tombstones, history."""

from __future__ import annotations

import hashlib
import threading

import psycopg
import pytest

from velocity.db import Actor
from velocity.errors import NotFound, PathConflict, VersionConflict
from velocity.files import FileClient

from .helpers import file_state


@pytest.fixture
def project(new_project):
    return new_project()


@pytest.fixture
def owner_files(db, project):
    return FileClient(db, Actor.user(project[1]))


def current_rows(db, project_id, path):
    with db.transaction() as conn:
        return conn.execute(
            "SELECT version FROM project_files WHERE project_id = %s AND file_path = %s"
            " AND is_current_version", (project_id, path)).fetchall()


def test_each_change_is_a_new_current_version(db, project, owner_files):
    project_id, owner = project
    first = owner_files.upsert(project_id, "src/App.tsx", "one")
    second = owner_files.upsert(project_id, "src/App.tsx", "two", expected_version=1)
    assert (first.version, second.version) == (1, 2)
    assert second.parent_version_id == first.id
    assert second.content_hash == hashlib.sha256(b"two").hexdigest()
    assert second.file_type == "typescript"
    assert second.created_by == owner
    assert second.last_modified_by == owner
    assert current_rows(db, project_id, "src/App.tsx") == [(2,)]
    history = owner_files.history(project_id, "src/App.tsx")
    assert [(row.version, row.is_current_version) for row in history] == [(2, True), (1, False)]


def test_unchanged_content_is_a_no_op(db, project, owner_files):
    project_id, _ = project
    written = owner_files.upsert(project_id, "README.md", "# hi")
    before = file_state(db, project_id)
    again = owner_files.upsert(project_id, "README.md", "# hi")
    assert again.id == written.id and again.version == 1
    assert file_state(db, project_id) == before


def test_stale_expected_version_is_a_conflict_naming_the_current(db, project, owner_files):
    project_id, _ = project
    owner_files.upsert(project_id, "a.txt", "1")
    owner_files.upsert(project_id, "a.txt", "2")
    before = file_state(db, project_id)
    with pytest.raises(VersionConflict) as raised:
        owner_files.upsert(project_id, "a.txt", "3", expected_version=1)
    assert raised.value.current == 2
    assert "expected version 1, current version is 2" in str(raised.value)
    assert file_state(db, project_id) == before


def test_expected_version_zero_means_the_path_must_be_free(project, owner_files):
    project_id, _ = project
    owner_files.upsert(project_id, "new.txt", "x", expected_version=0)
    with pytest.raises(VersionConflict):
        owner_files.upsert(project_id, "new.txt", "y", expected_version=0)


def test_two_writers_with_the_same_expected_version_one_wins(db, project, owner_files):
    project_id, _ = project
    owner_files.upsert(project_id, "race.txt", "base")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def write(content: str) -> None:
        barrier.wait()
        try:
            owner_files.upsert(project_id, "race.txt", content, expected_version=1)
            outcomes.append("won")
        except VersionConflict as conflict:
            assert conflict.current == 2
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(text,)) for text in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "won"]
    assert current_rows(db, project_id, "race.txt") == [(2,)]


def test_tombstones_vanish_and_recreation_continues_the_versions(db, project, owner_files):
    project_id, _ = project
    owner_files.upsert(project_id, "gone.txt", "here")
    tombstone = owner_files.delete(project_id, "gone.txt", expected_version=1)
    assert tombstone.is_deleted and tombstone.version == 2 and tombstone.content is None
    assert "gone.txt" not in [f.file_path for f in owner_files.list_current(project_id)]
    assert in_view(db, project_id, "gone.txt") == []

    before = file_state(db, project_id)
    again = owner_files.delete(project_id, "gone.txt")
    assert again.id == tombstone.id  # deleting a deleted path is a safe no-op
    assert file_state(db, project_id) == before  # no version, no event

    back = owner_files.upsert(project_id, "gone.txt", "back", expected_version=2)
    assert back.version == 3 and not back.is_deleted
    current = {f.file_path: f.content for f in owner_files.list_current(project_id)}
    assert current["gone.txt"] == "back"
    assert in_view(db, project_id, "gone.txt") == [(3, "back")]


def in_view(db, project_id, path: str) -> list[tuple]:
    with db.transaction() as conn:
        return conn.execute("SELECT version, content FROM project_files_current"
                            " WHERE project_id = %s AND file_path = %s",
                            (project_id, path)).fetchall()


def test_deleting_a_path_that_never_existed_is_not_found(db, project, owner_files):
    project_id, _ = project
    before = file_state(db, project_id)
    with pytest.raises(NotFound, match="never.txt"):
        owner_files.delete(project_id, "never.txt")
    assert file_state(db, project_id) == before


def test_a_path_cannot_be_both_file_and_directory(db, project, owner_files):
    project_id, _ = project
    owner_files.upsert(project_id, "src/lib", "a file")
    owner_files.upsert(project_id, "docs/guide/intro.md", "# intro")
    before = file_state(db, project_id)
    with pytest.raises(PathConflict) as below_file:
        owner_files.upsert(project_id, "src/lib/util.ts", "x")
    assert below_file.value.facts["conflicting_path"] == "src/lib"
    with pytest.raises(PathConflict) as over_directory:
        owner_files.upsert(project_id, "docs/guide", "x")
    assert over_directory.value.facts["conflicting_path"] == "docs/guide/intro.md"
    assert file_state(db, project_id) == before
    # Siblings that merely share a prefix are fine.
    owner_files.upsert(project_id, "docs/guide.md", "ok")
    owner_files.upsert(project_id, "src/lib2/x.ts", "ok")
    # Once the file is deleted, the directory may exist.
    owner_files.delete(project_id, "src/lib")
    owner_files.upsert(project_id, "src/lib/util.ts", "now fine")


def test_file_type_is_inferred_from_the_extension_when_not_named(project, owner_files):
    project_id, _ = project
    assert owner_files.upsert(project_id, "x/data.json", "{}").file_type == "json"
    assert owner_files.upsert(project_id, "x/notes", "n").file_type == "text"
    assert owner_files.upsert(project_id, "x/a.py", "", file_type="text").file_type == "text"


def test_restore_writes_a_new_version_with_the_old_content(db, project, owner_files):
    project_id, _ = project
    owner_files.upsert(project_id, "r.txt", "first")
    owner_files.upsert(project_id, "r.txt", "second")
    restored = owner_files.restore(project_id, "r.txt", 1)
    assert (restored.version, restored.content) == (3, "first")
    events = owner_files.events_since(project_id, 0)
    assert events[-1].type == "file:update" and events[-1].payload["restored_from"] == 1
    owner_files.delete(project_id, "r.txt")
    with pytest.raises(Exception, match="nothing to restore"):
        owner_files.restore(project_id, "r.txt", 4)
    with pytest.raises(NotFound):
        owner_files.restore(project_id, "r.txt", 99)


def test_list_is_ordered_by_path_bytes(project, owner_files):
    project_id, _ = project
    for path in ["b.txt", "B.txt", "a/z.txt", "a.txt", "_x.txt"]:
        owner_files.upsert(project_id, path, path)
    paths = [f.file_path for f in owner_files.list_current(project_id)]
    assert paths == sorted(paths, key=lambda p: p.encode())


def test_binary_files_are_registered_by_the_service_only(db, project, owner_files):
    project_id, _ = project
    service = FileClient(db, Actor.service())
    digest = hashlib.sha256(b"\x89PNG").hexdigest()
    row = service.upsert_binary(project_id, "public/logo.png", "blobs/logo", digest, 4,
                                file_type="image")
    assert row.content is None and row.storage_key == "blobs/logo" and row.size_bytes == 4
    listed = {f.file_path: f for f in owner_files.list_current(project_id)}
    assert listed["public/logo.png"].storage_key == "blobs/logo"
    from velocity.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        owner_files.upsert_binary(project_id, "x.png", "blobs/other", digest, 4)


def server_has_lz4(db) -> bool:
    with db.transaction() as conn:
        try:
            with conn.transaction():
                conn.execute("SET LOCAL default_toast_compression = lz4")
        except psycopg.errors.InvalidParameterValue:
            return False
    return True


def test_large_content_is_stored_with_lz4_where_the_server_has_it(db, project, owner_files):
    project_id, _ = project
    content = "export const line = 'a source line that compresses well';\n" * 2_000
    written = owner_files.upsert(project_id, "src/big.ts", content)
    with db.transaction() as conn:
        method, stored = conn.execute(
            "SELECT pg_column_compression(content), content FROM project_files WHERE id = %s",
            (written.id,)).fetchone()
    assert stored == content
    assert method == ("lz4" if server_has_lz4(db) else "pglz")


def insert_file_row(db, project, content_hash: str, version: int = 1, size: int = 1) -> None:
    """A version written past the RPCs, as only the migrating role can: the table's own
    constraints are all that stands in the way."""
    project_id, owner = project
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO project_files (project_id, file_path, file_type, content, content_hash,"
            " size_bytes, version, created_by) VALUES (%s, %s, 'text', 'x', %s, %s, %s, %s)",
            (project_id, f"direct/{content_hash[:8]}-{len(content_hash)}.txt", content_hash,
             size, version, owner))


@pytest.mark.parametrize("content_hash", [
    "A" * 64,  # upper case
    "a" * 63,
    "a" * 65,
    "g" * 64,
    "a" * 62 + "\u00e9",  # 64 bytes, 63 characters
    "a" * 63 + "\n",
    "",
])
def test_a_live_row_needs_a_lowercase_hex_sha256(db, project, content_hash):
    with pytest.raises(psycopg.errors.CheckViolation, match="project_files_live_has_sha256"):
        insert_file_row(db, project, content_hash)


def test_a_lowercase_hex_sha256_is_accepted(db, project):
    insert_file_row(db, project, hashlib.sha256(b"x").hexdigest())
    assert len(current_rows(db, project[0], "direct/2d711642-64.txt")) == 1


@pytest.mark.parametrize(("version", "size", "constraint"), [
    (0, 1, "project_files_version_positive"),
    (1, -1, "project_files_size_not_negative"),
])
def test_versions_start_at_one_and_sizes_are_not_negative(db, project, version, size,
                                                          constraint):
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        insert_file_row(db, project, hashlib.sha256(b"x").hexdigest(), version, size)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_project_name_has_1_to_200_characters(db, project, name):
    with pytest.raises(psycopg.errors.CheckViolation, match="projects_name_length"):
        with db.transaction() as conn:
            conn.execute("UPDATE projects SET name = %s WHERE id = %s", (name, project[0]))


def test_an_event_has_a_known_type(db, project):
    with pytest.raises(psycopg.errors.CheckViolation, match="file_events_known_type"):
        with db.transaction() as conn:
            conn.execute("INSERT INTO file_events (project_id, seq, type, payload)"
                         " VALUES (%s, 1000000, 'file:rename', '{}')", (project[0],))
