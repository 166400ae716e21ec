"""Server instructions per single-file upsert: the write path's cost, free of the host's noise.

Upserts per second on a shared machine move by tens of percent with the host's load; the
instructions a backend executes per upsert do not (repeated runs agree within 2 %). This
migrates a fresh cluster, then runs PostgreSQL in single-user mode under valgrind's callgrind
twice, with FEW and with FEW + UPSERTS prepared upserts, each in its own transaction as
pgbench sends them in bench.rpc_throughput, and reports the difference per upsert: start-up
and first-use caching cancel out.

`--extra-sql FILE` runs a SQL file after the migrations, before measuring: what a part of the
write path costs is the difference it makes when that file replaces or drops it (the figures
in docs/database.md were priced this way).

Needs valgrind (`apt-get install valgrind`).

    python -m bench.rpc_instructions --json [--upserts 200] [--runs 3] [--extra-sql FILE ...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import psycopg

from bench.common import emit
from velocity import accounts
from velocity.cluster import DATABASE_NAME, LocalCluster
from velocity.db import Database, migrate

FEW = 20
PATH = "src/App.tsx"


def prepare_cluster(root: Path, extra_sql: Sequence[Path] = ()
                    ) -> tuple[LocalCluster, uuid.UUID, uuid.UUID]:
    """A migrated cluster (plus `extra_sql`, in order) holding one user and their project,
    stopped for single-user mode."""
    cluster = LocalCluster(root, ephemeral=True)
    cluster.start()
    try:
        url = cluster.url()
        migrate(url)
        for path in extra_sql:
            _run_sql_file(url, path)
        with Database(url, max_size=1) as db:
            user = accounts.create_user(db, f"instructions-{uuid.uuid4().hex[:8]}@example.test")
            project = accounts.create_project(db, "instructions", user)
            with db.transaction() as conn:
                conn.execute("UPDATE internal.config SET rate_limit_burst = 1000000000,"
                             " rate_limit_per_second = 1000000000")
        cluster.stop()
    except BaseException:
        cluster.destroy()  # whatever failed, no server is left running
        raise
    return cluster, user, project


def _run_sql_file(url: str, path: Path) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(path.read_bytes())
    except psycopg.Error as error:
        raise RuntimeError(f"--extra-sql {path} failed: {error}") from error


def upsert_script(user: uuid.UUID, project: uuid.UUID, upserts: int, first: int) -> str:
    claims = f'{{"sub": "{user}", "role": "authenticated"}}'
    lines = [
        "PREPARE claims AS SELECT set_config('role', 'authenticated', true),"
        f" set_config('request.jwt.claims', '{claims}', true);",
        f"PREPARE upsert(int) AS SELECT version FROM upsert_project_file('{project}',"
        f" '{PATH}', 'export const n = ' || $1 || ';');",
    ]
    lines += [f"BEGIN; EXECUTE claims; EXECUTE upsert({first + n}); COMMIT;"
              for n in range(upserts)]
    return "\n".join(lines) + "\n"


def instructions(cluster: LocalCluster, script: str) -> int:
    """Instructions the single-user backend executed for `script`, start-up included."""
    state = cluster.state()
    assert state is not None
    command = cluster.as_server_user([
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        str(Path(state.bin_dir) / "postgres"), "--single", "-D", str(cluster.data_dir),
        DATABASE_NAME])
    result = subprocess.run(command, input=script, capture_output=True, text=True,
                            cwd=cluster.root, check=False)
    if result.returncode != 0 or "ERROR:" in result.stdout:
        raise RuntimeError(f"single-user run failed ({result.returncode}):\n"
                           f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}")
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total:\n{result.stderr[-1500:]}")
    return int(found.group(1))


def measure(upserts: int, runs: int, extra_sql: Sequence[Path] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="velocity-instructions-") as temp:
        os.chmod(temp, 0o755)
        cluster, user, project = prepare_cluster(Path(temp) / "cluster", extra_sql)
        try:
            per_upsert = []
            written = 0
            for _ in range(runs):
                few = instructions(cluster, upsert_script(user, project, FEW, written))
                written += FEW
                many = instructions(cluster, upsert_script(user, project, FEW + upserts, written))
                written += FEW + upserts
                per_upsert.append((many - few) / upserts)
                print(f"run: {per_upsert[-1]:,.0f} instructions per upsert", file=sys.stderr)
        finally:
            cluster.destroy()
    return {"upserts_per_run": upserts, "runs": runs,
            "extra_sql": [str(path) for path in extra_sql],
            "instructions_per_upsert_median": round(statistics.median(per_upsert)),
            "instructions_per_upsert_runs": [round(value) for value in per_upsert]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--upserts", type=int, default=200,
                        help=f"upserts measured per run, beyond the {FEW} start-up ones")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--extra-sql", type=Path, action="append", default=[], metavar="FILE",
                        help="SQL run after the migrations, before measuring (repeatable)")
    args = parser.parse_args(argv)
    if args.upserts < 1 or args.runs < 1:
        parser.error("--upserts and --runs must be at least 1")
    for path in args.extra_sql:
        if not path.is_file():
            parser.error(f"--extra-sql {path}: no such file")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed: apt-get install valgrind")
    emit(measure(args.upserts, args.runs, args.extra_sql), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
