"""Migrations: idempotent, recorded with checksums, safe to run twice at once, edits refused,
and applicable to a Supabase database."""

from __future__ import annotations

import hashlib
import shutil
import threading

import psycopg
import pytest

from velocity import accounts
from velocity.db import SQL_DIR, Actor, Database, MigrationError, load_migrations, migrate
from velocity.files import FileClient

from .conftest import with_database


@pytest.fixture
def empty_database(pg_server_url):
    name = f"migrations_{threading.get_ident()}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def applied(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT filename, checksum FROM schema_migrations ORDER BY filename").fetchall()


def test_migrations_apply_once_and_rerunning_is_a_no_op(empty_database):
    names = [m.name for m in load_migrations()]
    assert migrate(empty_database) == names
    assert migrate(empty_database) == []
    assert applied(empty_database) == [
        (path.name, hashlib.sha256(path.read_text().encode()).hexdigest())
        for path in sorted(SQL_DIR.glob("*.sql"))]


def test_two_runners_at_once_apply_each_file_once(empty_database):
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(empty_database))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(len(r) for r in results) == [0, len(load_migrations())]


def test_an_edited_applied_migration_is_refused_by_name(empty_database, tmp_path):
    directory = tmp_path / "sql"
    shutil.copytree(SQL_DIR, directory)
    migrate(empty_database, directory)
    edited = directory / "0003_project_files.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent edit\n")
    with pytest.raises(MigrationError, match="0003_project_files.sql was changed"):
        migrate(empty_database, directory)


def test_a_failing_migration_rolls_back_and_names_itself(empty_database, tmp_path):
    directory = tmp_path / "sql"
    shutil.copytree(SQL_DIR, directory)
    (directory / "9999_broken.sql").write_text("CREATE TABLE ok_table (id int);\nSELECT nonsense;")
    with pytest.raises(MigrationError, match="9999_broken.sql failed"):
        migrate(empty_database, directory)
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('ok_table')").fetchone() == (None,)
    assert "9999_broken.sql" not in [name for name, _ in applied(empty_database)]


# What a Supabase project's database already has where the shim (0001) would create it: the
# roles (cluster-wide, so already here), and GoTrue's auth schema with Supabase's helpers.
SUPABASE_AUTH = """
CREATE SCHEMA auth;
CREATE TABLE auth.users (
  instance_id uuid, id uuid NOT NULL PRIMARY KEY, aud varchar(255), role varchar(255),
  email varchar(255), encrypted_password varchar(255), email_confirmed_at timestamptz,
  raw_app_meta_data jsonb, raw_user_meta_data jsonb, is_super_admin boolean,
  created_at timestamptz, updated_at timestamptz, phone text UNIQUE DEFAULT NULL,
  is_sso_user boolean NOT NULL DEFAULT false, deleted_at timestamptz,
  is_anonymous boolean NOT NULL DEFAULT false);
CREATE UNIQUE INDEX users_email_partial_key ON auth.users (email) WHERE is_sso_user = false;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;
COMMENT ON FUNCTION auth.uid() IS 'Deprecated. Use auth.jwt() -> ''sub'' instead.';
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
$$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
  select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;
"""


def auth_schema(url: str) -> tuple:
    """auth.users' columns and the auth helpers' definitions: equal means untouched."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'auth'"
            " AND table_name = 'users' ORDER BY ordinal_position").fetchall()
        helpers = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid), obj_description(p.oid, 'pg_proc')"
            " FROM pg_proc p WHERE p.pronamespace = 'auth'::regnamespace"
            " ORDER BY p.proname").fetchall()
    return tuple(columns), tuple(helpers)


def test_on_a_supabase_database_the_shim_changes_nothing_and_the_rpcs_work(empty_database):
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(SUPABASE_AUTH)
    supabase = auth_schema(empty_database)
    migrate(empty_database)
    assert auth_schema(empty_database) == supabase
    with Database(empty_database, max_size=2) as db:
        owner = accounts.create_user(db, "owner@supabase.example")
        project = accounts.create_project(db, "on supabase", owner)
        files = FileClient(db, Actor.user(owner))
        assert files.upsert(project, "index.html", "<p>hi</p>").version == 1
        assert [file.file_path for file in files.list_current(project)] == ["index.html"]
