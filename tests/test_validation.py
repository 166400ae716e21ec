"""Every bad input fails with its own error and SQLSTATE, and changes nothing."""

from __future__ import annotations

import pytest

from velocity.db import Actor
from velocity.errors import (
    ContentTooLarge,
    InvalidFileType,
    InvalidInput,
    InvalidPath,
    NotFound,
    PermissionDenied,
)
from velocity.files import FileClient

from .helpers import file_state


@pytest.fixture
def project(new_project):
    return new_project()


@pytest.fixture
def files(db, project):
    return FileClient(db, Actor.user(project[1]))


BAD_PATHS = [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("src/../../etc", "dot_segment"),
    ("..", "dot_segment"),
    ("./a", "dot_segment"),
    ("a/./b", "dot_segment"),
    ("a\\b", "backslash"),
    ("a\x01b", "control_character"),
    ("a\nb", "control_character"),
    ("a\x7fb", "control_character"),
    ("a\u0085b", "control_character"),
    ("a/", "trailing_slash"),
    ("a//b", "empty_segment"),
    ("a" * 1025, "too_long"),
    ("é" * 513, "too_long"),  # 1,026 bytes in UTF-8, 513 characters
    ("/".join(["d"] * 33), "too_deep"),
    ("c:notes.txt", "drive_letter"),
    ("a/" + "b" * 256, "segment_too_long"),
    ("a\x00b", "control_character"),
]


@pytest.mark.parametrize("path, reason", BAD_PATHS, ids=[r for _, r in BAD_PATHS])
def test_bad_paths_are_refused_with_their_reason(db, project, files, path, reason):
    project_id, _ = project
    before = file_state(db, project_id)
    with pytest.raises(InvalidPath) as raised:
        files.upsert(project_id, path, "content")
    assert raised.value.reason == reason
    with pytest.raises(InvalidPath):
        files.bulk_upsert(project_id, [{"file_path": path, "content": "x"}])
    assert file_state(db, project_id) == before


def test_boundary_paths_are_accepted(project, files):
    project_id, _ = project
    files.upsert(project_id, "/".join(["a" * 255] * 3 + ["a" * 254, "a"]), "x")  # 1,024 bytes
    files.upsert(project_id, "é" * 127 + "e", "x")  # a 255-byte name
    files.upsert(project_id, "/".join(["d"] * 31) + "/f", "x")
    files.upsert(project_id, "ünïcødé/文件.txt", "x")
    files.upsert(project_id, ".env.local", "x")
    files.upsert(project_id, "a/..b/c..", "x")


def test_content_over_the_limit_is_refused(db, project, files):
    project_id, _ = project
    before = file_state(db, project_id)
    with pytest.raises(ContentTooLarge) as raised:
        files.upsert(project_id, "big.txt", "x" * (5 * 1024 * 1024 + 1))
    assert raised.value.facts["limit"] == 5 * 1024 * 1024
    assert file_state(db, project_id) == before
    files.upsert(project_id, "big.txt", "x" * (5 * 1024 * 1024))


def test_the_content_limit_is_configurable(db, project, files):
    project_id, _ = project
    with db.transaction() as conn:
        conn.execute("UPDATE internal.config SET max_content_bytes = 10")
    try:
        with pytest.raises(ContentTooLarge, match="over the limit of 10 bytes"):
            files.upsert(project_id, "c.txt", "x" * 11)
    finally:
        with db.transaction() as conn:
            conn.execute("UPDATE internal.config SET max_content_bytes = 5242880")


def test_unknown_file_type_is_refused(db, project, files):
    project_id, _ = project
    before = file_state(db, project_id)
    with pytest.raises(InvalidFileType, match="unknown file_type 'cobol'"):
        files.upsert(project_id, "a.cbl", "x", file_type="cobol")
    assert file_state(db, project_id) == before


def test_nul_in_content_is_refused_clearly(project, files):
    with pytest.raises(InvalidInput, match="NUL"):
        files.upsert(project[0], "a.txt", "a\x00b")


def test_unknown_project_and_malformed_ids(db, files):
    service = FileClient(db, Actor.service())
    with pytest.raises(NotFound, match="project"):
        service.upsert("00000000-0000-0000-0000-000000000000", "a.txt", "x")
    with pytest.raises(PermissionDenied):
        files.upsert("00000000-0000-0000-0000-000000000000", "a.txt", "x")
    with pytest.raises(InvalidInput):
        files.upsert("not-a-uuid", "a.txt", "x")


def test_sql_metacharacters_are_just_text(db, project, files):
    project_id, _ = project
    path = "x'; DROP TABLE project_files; --.txt"
    row = files.upsert(project_id, path, "'); DELETE FROM projects; --")
    assert row.file_path == path
    assert [f.content for f in files.list_current(project_id)] == ["'); DELETE FROM projects; --"]
