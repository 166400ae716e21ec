"""bench.rpc_instructions applies --extra-sql before measuring, and names a file it cannot use."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench import rpc_instructions


@pytest.fixture
def cluster_root() -> Iterator[Path]:
    # The cluster runs as the postgres user when the tests run as root: a world-readable parent.
    root = Path(tempfile.mkdtemp(prefix="velocity-test-instructions-"))
    os.chmod(root, 0o755)
    yield root / "cluster"
    shutil.rmtree(root, ignore_errors=True)


def test_a_missing_extra_sql_file_is_named(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.sql"
    with pytest.raises(SystemExit) as exit_info:
        rpc_instructions.main(["--extra-sql", str(missing)])
    assert exit_info.value.code == 2
    assert f"--extra-sql {missing}: no such file" in capsys.readouterr().err


def test_extra_sql_is_applied_after_the_migrations(cluster_root: Path, tmp_path: Path) -> None:
    extra = tmp_path / "drop_notify.sql"
    extra.write_text("ALTER TABLE public.file_events DISABLE TRIGGER file_events_notify;")
    cluster, _, _ = rpc_instructions.prepare_cluster(cluster_root, [extra])
    try:
        cluster.start()
        with psycopg.connect(cluster.url()) as conn:
            (enabled,) = conn.execute(
                "SELECT tgenabled FROM pg_trigger WHERE tgname = 'file_events_notify'").fetchone()
        assert enabled == "D"
    finally:
        cluster.destroy()


def test_failing_extra_sql_names_the_file_and_removes_the_cluster(cluster_root: Path,
                                                                   tmp_path: Path) -> None:
    broken = tmp_path / "broken.sql"
    broken.write_text("ALTER TABLE public.no_such_table DROP COLUMN x;")
    with pytest.raises(RuntimeError, match=r"--extra-sql .*broken\.sql failed: .*no_such_table"):
        rpc_instructions.prepare_cluster(cluster_root, [broken])
    assert not cluster_root.exists()
