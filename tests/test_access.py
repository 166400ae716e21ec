"""Row-level security and RPC membership checks, enforced for real as PostgREST would."""

from __future__ import annotations

import psycopg
import pytest

from velocity.db import Actor
from velocity.errors import PermissionDenied
from velocity.files import FileClient

from .helpers import file_state

TABLES = ["projects", "project_members", "project_files", "project_files_current",
          "file_events", "project_snapshots", "preview_sessions"]


@pytest.fixture
def setup(db, new_user, new_project):
    editor, viewer, stranger = new_user("editor"), new_user("viewer"), new_user("stranger")
    project_id, owner = new_project(members=[(editor, "editor"), (viewer, "viewer")])
    FileClient(db, Actor.service()).upsert(project_id, "index.html", "<h1>hi</h1>")
    with db.transaction() as conn:
        conn.execute("INSERT INTO preview_sessions (user_id, project_id) VALUES (%s, %s)",
                     (owner, project_id))
        conn.execute(
            "INSERT INTO project_snapshots (project_id, watermark, file_seq, sha256, size_bytes,"
            " file_count, storage_key, manifest_key) VALUES (%s, 1, 1, repeat('a', 64), 1, 1,"
            " 'k', 'm')", (project_id,))
    return {"project": project_id, "owner": owner, "editor": editor, "viewer": viewer,
            "stranger": stranger}


def visible_rows(db, user, table, project_id) -> int:
    column = "id" if table == "projects" else "project_id"
    with db.transaction(Actor.user(user)) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s",
                                (project_id,)).fetchone()
    return count


@pytest.mark.parametrize("table", TABLES)
def test_non_members_see_nothing_in_any_table(db, setup, table):
    assert visible_rows(db, setup["stranger"], table, setup["project"]) == 0
    assert visible_rows(db, setup["viewer"], table, setup["project"]) >= 1


def test_profiles_are_seen_by_their_user_and_co_members_only(db, setup):
    def sees_owner(user) -> bool:
        with db.transaction(Actor.user(user)) as conn:
            return conn.execute("SELECT 1 FROM user_profiles WHERE id = %s",
                                (setup["owner"],)).fetchone() is not None
    assert sees_owner(setup["owner"]) and sees_owner(setup["editor"])
    assert not sees_owner(setup["stranger"])


@pytest.mark.parametrize("table", ["feature_flag_rollouts", "schema_migrations",
                                   "internal.config", "internal.rate_limit_buckets"])
def test_tables_users_have_no_business_reading_are_closed(db, setup, table):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.transaction(Actor.user(setup["owner"])) as conn:
            conn.execute(f"SELECT count(*) FROM {table}")


def test_row_level_security_is_on_for_every_table(db):
    with db.transaction() as conn:
        tables = conn.execute(
            "SELECT c.relnamespace::regnamespace || '.' || c.relname, c.relrowsecurity"
            " FROM pg_class c"
            " WHERE c.relnamespace IN ('public'::regnamespace, 'internal'::regnamespace)"
            " AND c.relkind IN ('r', 'p')").fetchall()
    assert {"public.project_files", "internal.config"} <= {name for name, _ in tables}
    assert [name for name, on in tables if not on] == []


def test_every_function_users_may_call_runs_as_its_definer_on_a_pinned_path(db):
    with db.transaction() as conn:
        callable_by_users = conn.execute(
            "SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p"
            " WHERE p.pronamespace = 'public'::regnamespace"
            " AND has_function_privilege('authenticated', p.oid, 'EXECUTE')").fetchall()
    assert {name for name, _, _ in callable_by_users} >= {
        "upsert_project_file", "upsert_project_binary_file", "delete_project_file",
        "list_current_files", "bulk_upsert_project_files", "bulk_delete_project_files",
        "file_history", "restore_file_version", "events_since", "is_feature_enabled"}
    for name, security_definer, settings in callable_by_users:
        assert security_definer, name
        assert settings == ["search_path=pg_catalog, public"], name


def test_non_members_are_denied_every_rpc(db, setup):
    project_id = setup["project"]
    stranger = FileClient(db, Actor.user(setup["stranger"]))
    before = file_state(db, project_id)
    calls = [
        lambda: stranger.list_current(project_id),
        lambda: stranger.upsert(project_id, "x.txt", "x"),
        lambda: stranger.delete(project_id, "index.html"),
        lambda: stranger.bulk_upsert(project_id, [{"file_path": "y", "content": "y"}]),
        lambda: stranger.bulk_delete(project_id, ["index.html"]),
        lambda: stranger.history(project_id, "index.html"),
        lambda: stranger.restore(project_id, "index.html", 1),
        lambda: stranger.events_since(project_id, 0),
    ]
    for call in calls:
        with pytest.raises(PermissionDenied, match="not a member"):
            call()
    assert file_state(db, project_id) == before


def test_viewers_read_but_cannot_write(db, setup):
    project_id = setup["project"]
    viewer = FileClient(db, Actor.user(setup["viewer"]))
    assert [f.file_path for f in viewer.list_current(project_id)] == ["index.html"]
    assert viewer.events_since(project_id, 0)
    before = file_state(db, project_id)
    for call in [lambda: viewer.upsert(project_id, "x.txt", "x"),
                 lambda: viewer.delete(project_id, "index.html"),
                 lambda: viewer.bulk_upsert(project_id, [{"file_path": "y", "content": "y"}]),
                 lambda: viewer.bulk_delete(project_id, ["index.html"]),
                 lambda: viewer.restore(project_id, "index.html", 1)]:
        with pytest.raises(PermissionDenied, match="viewers cannot change"):
            call()
    assert file_state(db, project_id) == before


def test_editors_write_and_are_recorded_as_authors(db, setup):
    row = FileClient(db, Actor.user(setup["editor"])).upsert(setup["project"], "e.txt", "e")
    assert row.last_modified_by == setup["editor"]
    event = FileClient(db, Actor.service()).events_since(setup["project"], 1)[0]
    assert event.actor == setup["editor"] and event.payload["sender"] == str(setup["editor"])


def test_members_cannot_write_tables_directly(db, setup):
    project_id = setup["project"]
    before = file_state(db, project_id)
    statements = [
        ("INSERT INTO project_files (project_id, file_path, file_type, content, content_hash,"
         " version, created_by) VALUES (%s, 'z', 'text', 'z', repeat('a', 64), 9, %s)",
         (project_id, setup["owner"])),
        ("UPDATE project_files SET content = 'hacked' WHERE project_id = %s", (project_id,)),
        ("DELETE FROM project_files WHERE project_id = %s", (project_id,)),
        ("INSERT INTO file_events (project_id, seq, type, payload) VALUES (%s, 99,"
         " 'file:update', '{}')", (project_id,)),
        ("UPDATE projects SET last_event_seq = 0 WHERE id = %s", (project_id,)),
        ("UPDATE preview_sessions SET status = 'active' WHERE project_id = %s", (project_id,)),
        ("UPDATE feature_flags SET is_enabled = true", ()),
        ("SELECT * FROM internal.config", ()),
    ]
    for statement, args in statements:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with db.transaction(Actor.user(setup["owner"])) as conn:
                conn.execute(statement, args)
    assert file_state(db, project_id) == before


def test_a_caller_without_identity_must_authenticate(db, setup):
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification,
                       match="authentication required"):
        with db.transaction() as conn:
            conn.execute("SELECT set_config('role', 'authenticated', true)")
            conn.execute("SELECT * FROM list_current_files(%s)", (setup["project"],))


def test_anonymous_role_cannot_call_rpcs(db, setup):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.transaction() as conn:
            conn.execute("SELECT set_config('role', 'anon', true)")
            conn.execute("SELECT * FROM list_current_files(%s)", (setup["project"],))
