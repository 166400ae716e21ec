"""bench.rpc_side_by_side: two schemas, one from a git revision, measured in alternation."""

from __future__ import annotations

import json
import subprocess

import pytest

from bench.rpc_side_by_side import REPOSITORY, export_migrations, main
from velocity.db import SQL_DIR


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_the_base_gets_the_migrations_of_its_revision(tmp_path):
    newest = sorted(path.name for path in SQL_DIR.glob("*.sql"))[-1]
    added_by = git("log", "--format=%H", "--diff-filter=A", "-1", "--", f"sql/{newest}")
    exported = export_migrations(f"{added_by}~1", tmp_path)
    names = sorted(path.name for path in exported.glob("*.sql"))
    assert newest not in names
    assert names == sorted(path.name for path in SQL_DIR.glob("*.sql"))[:-1]
    show = ["git", "-C", str(REPOSITORY), "show", f"{added_by}~1:sql/{names[0]}"]
    committed = subprocess.run(show, capture_output=True, check=True).stdout
    assert (exported / names[0]).read_bytes() == committed


def test_a_run_alternates_the_two_databases(capsys):
    assert main(["--base", "HEAD", "--clients", "1", "--pairs", "2", "--seconds", "1",
                 "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["base"] == "HEAD" and figures["clients"] == 1
    assert len(figures["pairs"]) == 2
    for pair in figures["pairs"]:
        assert pair["base"] > 0 and pair["head"] > 0
        assert pair["ratio"] == pytest.approx(pair["head"] / pair["base"], abs=0.001)
    assert set(figures["host_yardstick_ms"]) == {"before", "after"}
    assert all(ms > 0 for ms in figures["host_yardstick_ms"].values())


@pytest.mark.parametrize(("argv", "named"), [
    (["--base", "no-such-revision"], "no-such-revision"),
    (["--base", "HEAD", "--pairs", "0"], "--pairs"),
    (["--base", "HEAD", "--seconds", "0.5"], "--seconds"),
])
def test_bad_arguments_exit_2_naming_them(argv, named, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
