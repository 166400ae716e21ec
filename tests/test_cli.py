"""The `velocity` CLI as ops run it: a real subprocess, real cluster, real database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

VELOCITY = [sys.executable, "-m", "orchestrator"]


def run(*args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with this environment minus its VELOCITY_ settings: only `env` gives those, so a
    shell's or another test's settings cannot steer the run."""
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith("VELOCITY_")}
    return subprocess.run([*VELOCITY, *args], capture_output=True, text=True, timeout=120,
                          env={**inherited, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def home():
    directory = Path(tempfile.mkdtemp(prefix="velocity-cli-"))
    os.chmod(directory, 0o755)
    env = {"VELOCITY_HOME": str(directory)}
    yield env
    run("db", "stop", env=env)
    shutil.rmtree(directory, ignore_errors=True)


def test_db_lifecycle_and_migrate(home):
    assert run("db", "status", env=home).returncode == 1  # not created yet
    started = run("db", "start", env=home)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith("postgresql://postgres:") and "@127.0.0.1:" in url
    assert run("db", "url", env=home).stdout.strip() == url
    status = json.loads(run("db", "status", "--json", env=home).stdout)
    assert status["running"] is True
    assert (Path(home["VELOCITY_HOME"]) / "pg" / "data" / "PG_VERSION").is_file()
    first = run("migrate", env=home)
    assert first.returncode == 0 and "0001_supabase_compat.sql" in first.stdout
    assert "up to date" in run("migrate", env=home).stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 5
    assert run("db", "stop", env=home).returncode == 0
    assert run("db", "status", env=home).returncode == 1
    assert run("db", "start", env=home).stdout.strip().startswith("postgresql://")


def test_the_cluster_lives_under_dot_velocity_by_default(tmp_path):
    result = run("db", "url", cwd=tmp_path)
    assert result.returncode == 1
    assert f"no cluster in {tmp_path / '.velocity' / 'pg'}" in result.stderr
    assert result.stderr.count("\n") == 1  # one line, however long the path


def test_velocity_database_url_overrides_the_embedded_cluster(database_url, tmp_path):
    env = {"VELOCITY_DATABASE_URL": database_url, "VELOCITY_HOME": str(tmp_path / "home")}
    assert run("db", "url", env=env).stdout.strip() == database_url
    migrated = run("migrate", env=env)
    assert migrated.returncode == 0 and "up to date" in migrated.stdout
    created = run("admin", "create-user", "env@example.test", "--json", env=env)
    assert created.returncode == 0, created.stderr
    user_id = json.loads(created.stdout)["user_id"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT email FROM auth.users WHERE id = %s",
                            (user_id,)).fetchone() == ("env@example.test",)
    assert not (tmp_path / "home" / "pg").exists()
    # --database-url wins over the variable.
    unreachable = {**env, "VELOCITY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    assert run("migrate", "--database-url", database_url, env=unreachable).returncode == 0


def test_admin_commands_print_ids(database_url):
    user = run("admin", "create-user", "ops@example.test", "--database-url", database_url,
               "--json")
    assert user.returncode == 0, user.stderr
    user_id = json.loads(user.stdout)["user_id"]
    other = json.loads(run("admin", "create-user", "dev@example.test", "--database-url",
                           database_url, "--json").stdout)["user_id"]
    project = run("admin", "create-project", "Landing page", "--owner", user_id, "--member",
                  f"{other}:viewer", "--database-url", database_url, "--json")
    assert project.returncode == 0, project.stderr
    project_id = json.loads(project.stdout)["project_id"]
    with psycopg.connect(database_url) as conn:
        members = dict(conn.execute("SELECT user_id::text, role FROM project_members"
                                    " WHERE project_id = %s", (project_id,)).fetchall())
    assert members == {user_id: "owner", other: "viewer"}


@pytest.mark.parametrize("args, message", [
    (["admin", "create-user", "not-an-email"], "not an email address"),
    (["admin", "create-project", "p", "--owner", "00000000-0000-0000-0000-000000000000"],
     "no such user"),
    (["admin", "create-project", "p", "--owner", "00000000-0000-0000-0000-000000000000",
      "--member", "x:boss"], "role must be one of owner, editor, viewer"),
])
def test_admin_bad_input_is_one_clear_line(database_url, args, message):
    result = run(*args, "--database-url", database_url)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_is_reported_clearly():
    result = run("migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
