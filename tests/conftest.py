"""Shared test services: one private PostgreSQL cluster per session (or
VELOCITY_TEST_DATABASE_URL), a migrated template database, and a fresh clone per module."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from velocity import accounts
from velocity.cluster import LocalCluster
from velocity.db import Database, migrate


def with_database(url: str, name: str) -> str:
    return make_conninfo(url, dbname=name)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL of the server's maintenance database; the cluster lives for the session."""
    external = os.environ.get("VELOCITY_TEST_DATABASE_URL")
    if external:
        yield external
        return
    root = Path(tempfile.mkdtemp(prefix="velocity-test-pg-"))
    os.chmod(root, 0o755)  # as root, the postgres user must reach the cluster directory
    cluster = LocalCluster(root, ephemeral=True)
    cluster.start()
    try:
        yield cluster.url("postgres")
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    name = f"velocity_template_{os.getpid()}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(with_database(pg_server_url, name))
    yield name
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clone_database(pg_server_url: str, template: str, label: str) -> str:
    name = f"t_{re.sub(r'[^a-z0-9]+', '_', label.lower())[-40:]}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


@pytest.fixture(scope="module")
def database_url(pg_server_url: str, template_database: str,
                 request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for this test module."""
    name = clone_database(pg_server_url, template_database, request.module.__name__)
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Database]:
    with Database(database_url, max_size=20) as database:
        yield database


@pytest.fixture
def new_user(db: Database):
    """Makes users with unique emails."""

    def make(label: str = "user") -> uuid.UUID:
        return accounts.create_user(db, f"{label}-{uuid.uuid4().hex[:10]}@example.test")

    return make


@pytest.fixture
def new_project(db: Database, new_user):
    """Makes a project; returns (project_id, owner_id)."""

    def make(owner: uuid.UUID | None = None,
             members: list[tuple[uuid.UUID, str]] | None = None) -> tuple[uuid.UUID, uuid.UUID]:
        owner = owner or new_user("owner")
        project = accounts.create_project(db, f"project {uuid.uuid4().hex[:6]}", owner,
                                          members or [])
        return project, owner

    return make


@pytest.fixture
def configured(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point settings-driven code (tasks, flows, the CLI) at this module's database and a
    fresh local store, as the VELOCITY_* environment does in production."""
    from tasks import resources
    from velocity.settings import get_settings

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("VELOCITY_DATABASE_URL", database_url)
    monkeypatch.setenv("VELOCITY_HOME", str(home))
    monkeypatch.setenv("VELOCITY_STORAGE", f"local://{home / 'storage'}")
    get_settings.cache_clear()
    resources.database.cache_clear()
    resources.object_store.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    resources.object_store.cache_clear()


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect server for the whole test session (starting one takes ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
