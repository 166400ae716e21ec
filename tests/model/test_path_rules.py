"""Path validation against a reference normaliser, over generated strings with unicode edge
cases: the database refuses exactly what the documented rules refuse, with the same reason,
and every path it accepts is a normalized relative path the container agent can hold."""

from __future__ import annotations

import posixpath
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.paths import UnsafePath, split_relative_path
from velocity.db import Actor
from velocity.errors import InvalidPath
from velocity.files import FileClient

from ..helpers import file_state
from .profiles import model_settings
from .reference import reference_problem

# Characters chosen to break path checks: separators and look-alikes, dots and look-alikes,
# controls (C0, DEL, C1 including NEL), bidi overrides, zero-width and byte-order marks,
# combining marks, line separators, multi-byte and astral characters, drive colons.
EDGE_CHARACTERS = [
    "/", ".", "..", "\\", ":", "C:", "a", "Z", "-", "_", " ", "~", "%2e", "%2f",
    "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\xa0",
    "\u2028", "\u2029", "\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\ufffd",
    "\u0301", "e\u0301", "\xe9", "\uff0e", "\uff0f", "\u2215", "\u2024", "\u3002",
    "\u6587", "\U0001f600", "\U0010ffff", "\U000e0001",
]
characters = st.one_of(
    st.sampled_from(EDGE_CHARACTERS),
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
)
segments = st.one_of(
    st.lists(characters, max_size=8).map("".join),
    st.sampled_from([".", "..", "", "index.html", "src", "a" * 255, "\xe9" * 128]),
    st.integers(250, 300).map(lambda n: "b" * n),
)
paths = st.one_of(
    st.lists(characters, max_size=30).map("".join),
    st.lists(segments, min_size=1, max_size=6).map("/".join),
    st.integers(30, 36).map(lambda depth: "/".join(["d"] * depth)),
    st.integers(1015, 1030).map(lambda size: "x/" + "y" * (size - 2)),
)


def database_problems(db, batch: list[str]) -> list[str | None]:
    with db.transaction() as conn:
        rows = conn.execute("SELECT internal.path_problem(p) FROM unnest(%s::text[])"
                            " WITH ORDINALITY AS t (p, n) ORDER BY n", (batch,)).fetchall()
    return [row[0] for row in rows]


def agent_accepts(path: str) -> bool:
    try:
        split_relative_path(path)
    except UnsafePath:
        return False
    return True


@pytest.fixture(scope="module")
def check(db):
    def run(batch: list[str]) -> None:
        for path, found in zip(batch, database_problems(db, batch), strict=True):
            expected = reference_problem(path)
            assert found == expected, f"{path!r}: database says {found}, reference {expected}"
            if found is None:
                # Accepted: its own normal form, relative, inside any root, holdable on disk.
                assert posixpath.normpath(path) == path, path
                assert not posixpath.isabs(path)
                assert posixpath.normpath(posixpath.join("/root", path)).startswith("/root/")
                assert agent_accepts(path), f"the agent cannot hold accepted path {path!r}"
    return run


@model_settings(examples=60, long_examples=2000)
@given(batch=st.lists(paths, min_size=1, max_size=25))
@example(batch=["c:evil.txt", "C:/x", "a:b", "x/c:y", "b" * 256, "a/" + "\xe9" * 128,
                "a/" + "\xe9" * 127 + "e", ".\u200b", "\u202etxt.exe", "a\u2028b", "a\x85b"])
def test_the_database_agrees_with_the_reference_rules(check, batch):
    check(batch)


def test_rejected_paths_are_reported_with_their_reason_and_write_nothing(db, new_project):
    """Through the RPC, not just the helper: the reason reaches the caller as InvalidPath."""
    project_id, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    before = file_state(db, project_id)
    for path in ["c:evil.txt", "b" * 256, "d/" + "\U0001f600" * 64]:
        with pytest.raises(InvalidPath) as refused:
            files.upsert(project_id, path, "x")
        assert refused.value.reason == reference_problem(path), path
    assert file_state(db, project_id) == before


def test_unicode_paths_are_stored_byte_exact_and_never_normalized(db, new_project):
    """NFC and NFD spellings are different paths, each kept exactly as written."""
    project_id, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    composed = unicodedata.normalize("NFC", "caf\xe9.txt")
    decomposed = unicodedata.normalize("NFD", composed)
    files.upsert(project_id, composed, "nfc")
    files.upsert(project_id, decomposed, "nfd")
    files.upsert(project_id, "\u202etxt.exe", "bidi")
    listed = {f.file_path: f.content for f in files.list_current(project_id)}
    assert listed == {composed: "nfc", decomposed: "nfd", "\u202etxt.exe": "bidi"}


def test_lone_surrogates_are_refused_before_the_database(db, new_project):
    project_id, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    with pytest.raises(InvalidPath) as refused:
        files.upsert(project_id, "a\ud800.txt", "x")
    assert refused.value.reason == "invalid_unicode"
    with pytest.raises(InvalidPath, match="lone surrogate"):
        files.delete(project_id, "\udfff")
