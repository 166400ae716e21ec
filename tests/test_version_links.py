"""Versions and events without foreign keys (sql/0023, sql/0025): what the keys did when a
row is deleted still happens, and a user or project deleted while a write is in flight
cannot leave rows that name it."""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest
from psycopg.types.json import Jsonb

from velocity.db import Actor
from velocity.files import FileClient

from .helpers import file_state, wait_for


def delete_user(db, user: uuid.UUID) -> None:
    with db.transaction() as conn:
        conn.execute("DELETE FROM auth.users WHERE id = %s", (user,))


def version_links(db, file_id: uuid.UUID) -> tuple:
    with db.transaction() as conn:
        return conn.execute("SELECT parent_version_id, created_by, last_modified_by"
                            " FROM project_files WHERE id = %s", (file_id,)).fetchone()


def profile_exists(db, user: uuid.UUID) -> bool:
    with db.transaction() as conn:
        return conn.execute("SELECT EXISTS (SELECT FROM user_profiles WHERE id = %s)",
                            (user,)).fetchone()[0]


def test_deleting_a_version_unlinks_only_the_version_that_replaced_it(db, new_project):
    project, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    first = files.upsert(project, "src/a.ts", "one")
    second = files.upsert(project, "src/a.ts", "two")
    other_first = files.upsert(project, "src/b.ts", "one")
    other_second = files.upsert(project, "src/b.ts", "two")
    with db.transaction() as conn:
        conn.execute("DELETE FROM project_files WHERE id = %s", (first.id,))
    assert version_links(db, second.id) == (None, owner, owner)
    assert version_links(db, other_second.id) == (other_first.id, owner, owner)


def project_rows(db, project: uuid.UUID) -> tuple[int, int]:
    with db.transaction() as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM project_files WHERE project_id = %(p)s),"
            " (SELECT count(*) FROM file_events WHERE project_id = %(p)s)",
            {"p": project}).fetchone()


def test_deleting_a_project_deletes_its_versions_and_events(db, new_project):
    project, owner = new_project()
    kept, _ = new_project(owner)
    files = FileClient(db, Actor.user(owner))
    for content in ("one", "two", "three"):
        files.upsert(project, "index.html", content)
        files.upsert(kept, "index.html", content)
    files.delete(project, "index.html")
    assert project_rows(db, project) == (4, 4)
    with db.transaction() as conn:
        conn.execute("DELETE FROM projects WHERE id = %s", (project,))
    assert project_rows(db, project) == (0, 0)
    assert project_rows(db, kept) == (3, 3)


def wait_until_blocked(database_url: str, statement: str, future: Future) -> None:
    """Wait until a backend running `statement` waits on a lock; `future` must not be done."""
    with psycopg.connect(database_url) as watcher:
        wait_for(lambda: watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s", (statement + "%",)).fetchone()[0] == 1,
            message=f"{statement} to wait on a lock")
    assert not future.done()


def test_deleting_a_project_waits_for_a_write_in_flight(db, database_url, new_project):
    project, owner = new_project()

    def delete() -> None:
        with db.transaction() as conn:
            conn.execute("DELETE FROM projects WHERE id = %s", (project,))

    with ThreadPoolExecutor(1) as pool:
        with db.transaction(Actor.user(owner)) as writer:
            writer.execute("SELECT upsert_project_file(%s, 'src/late.ts', 'x')", (project,))
            deleted = pool.submit(delete)
            wait_until_blocked(database_url, "DELETE FROM projects", deleted)
        deleted.result(timeout=30)
    assert project_rows(db, project) == (0, 0)


def test_a_user_who_created_a_path_cannot_be_deleted(db, new_project, new_user):
    editor = new_user("editor")
    project, _ = new_project(members=[(editor, "editor")])
    FileClient(db, Actor.user(editor)).upsert(project, "src/mine.ts", "x")
    before = file_state(db, project)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as refused:
        delete_user(db, editor)
    message = str(refused.value)
    assert str(editor) in message and "'src/mine.ts'" in message and str(project) in message
    assert profile_exists(db, editor)
    assert file_state(db, project) == before


def test_deleting_a_user_clears_them_as_the_last_modifier(db, new_project, new_user):
    editor = new_user("editor")
    project, owner = new_project(members=[(editor, "editor")])
    FileClient(db, Actor.user(owner)).upsert(project, "README.md", "by the owner")
    edited = FileClient(db, Actor.user(editor)).upsert(project, "README.md", "by the editor")
    assert version_links(db, edited.id)[1:] == (owner, editor)
    delete_user(db, editor)
    assert version_links(db, edited.id)[1:] == (owner, None)
    assert not profile_exists(db, editor)


def test_deleting_a_user_waits_for_their_write_in_flight(db, database_url, new_project,
                                                          new_user):
    editor = new_user("editor")
    project, _ = new_project(members=[(editor, "editor")])
    with ThreadPoolExecutor(1) as pool:
        with db.transaction(Actor.user(editor)) as writer:
            writer.execute("SELECT upsert_project_file(%s, 'src/late.ts', 'x')", (project,))
            deleted = pool.submit(delete_user, db, editor)
            wait_until_blocked(database_url, "DELETE FROM auth.users", deleted)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            deleted.result(timeout=30)
    assert profile_exists(db, editor)


def test_adoption_refuses_authors_that_are_not_users(db, new_project):
    project, owner = new_project()
    stranger = uuid.uuid4()
    with db.transaction() as conn:
        (batch,) = conn.execute(
            "INSERT INTO internal.adoption_batches DEFAULT VALUES RETURNING id").fetchone()
    items = [{"file_path": "a.txt", "versions": [{"content": "from the owner",
                                                  "author": str(owner)}]},
             {"file_path": "b.txt", "versions": [{"content": "from nobody",
                                                  "author": str(stranger)}]}]
    before = file_state(db, project)
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=str(stranger)), \
            db.transaction() as conn:
        conn.execute("SELECT internal.adopt_files(%s, %s, %s)", (batch, project, Jsonb(items)))
    assert file_state(db, project) == before

    with db.transaction() as conn:
        conn.execute("SELECT internal.adopt_files(%s, %s, %s)",
                     (batch, project, Jsonb(items[:1])))
    listed = FileClient(db, Actor.user(owner)).list_current(project)
    assert [file.file_path for file in listed] == ["a.txt"]
