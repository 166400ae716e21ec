"""The embedded cluster on a machine without PostgreSQL: the `pgserver` wheel's server, found
when neither PATH nor Debian's layout has one, runs the whole contract."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import psycopg
import pytest

from velocity import accounts, cluster
from velocity.cluster import ClusterError, LocalCluster, find_bin_dir
from velocity.db import Actor, Database, migrate
from velocity.files import FileClient

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # on import pgserver asks platformdirs for a runtime dir
    import pgserver  # type: ignore[import-not-found]  # in the dev extra


@pytest.fixture
def no_system_postgres(monkeypatch, tmp_path):
    """PATH without initdb or pg_ctl, and no Debian server directories."""
    kept = [entry for entry in os.environ["PATH"].split(os.pathsep)
            if not any(Path(entry, tool).exists() for tool in ("initdb", "pg_ctl"))]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))
    monkeypatch.setattr(cluster, "DEBIAN_BIN_DIRS", str(tmp_path / "no-postgresql" / "*" / "bin"))
    assert shutil.which("pg_ctl") is None


def test_the_wheels_server_is_found_started_and_migrated(no_system_postgres):
    bin_dir = find_bin_dir()
    assert bin_dir == Path(pgserver.__file__).parent / "pginstall" / "bin"
    root = Path(tempfile.mkdtemp(prefix="velocity-pgserver-"))
    os.chmod(root, 0o755)  # as root, the postgres user must reach the cluster directory
    local = LocalCluster(root)
    try:
        state = local.start()
        assert Path(state.bin_dir) == bin_dir
        url = local.url()
        with psycopg.connect(url) as conn:
            (version,) = conn.execute("SHOW server_version").fetchone()  # type: ignore[misc]
        assert not version.startswith("15")  # the wheel's server, not this machine's
        migrate(url)
        with Database(url, max_size=2) as db:
            owner = accounts.create_user(db, f"wheel-{uuid.uuid4().hex[:8]}@example.test")
            project = accounts.create_project(db, "on the wheel's server", owner)
            written = FileClient(db, Actor.user(owner)).upsert(project, "src/App.tsx", "x")
            assert (written.version, written.created_by) == (1, owner)
        local.stop()
        assert not local.is_running()
    finally:
        local.destroy()


def test_without_any_server_the_error_says_what_to_install(no_system_postgres, monkeypatch):
    monkeypatch.setitem(sys.modules, "pgserver", None)  # as if the wheel were not installed
    with pytest.raises(ClusterError, match="install PostgreSQL.*pip install pgserver"):
        find_bin_dir()
