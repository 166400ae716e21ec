"""Migrations: idempotent, recorded with checksums, safe to run twice at once, edits refused."""

from __future__ import annotations

import shutil
import threading

import psycopg
import pytest

from velocity.db import SQL_DIR, MigrationError, load_migrations, migrate

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
    assert [name for name, _ in applied(empty_database)] == names


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
