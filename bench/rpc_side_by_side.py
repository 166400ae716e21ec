"""Upserts/s of the working tree's schema against another revision's, taken side by side.

On a shared machine upserts/s move by up to 3x within an hour, so two runs of
bench.rpc_throughput taken apart compare the host as much as the code. This migrates two
databases on one private cluster, one from `sql/` as committed at --base and one from the
working tree, gives each the same pgbench clients (users editing their own projects, as
bench.rpc_throughput's), and alternates short pgbench runs between them. Each pair ran
seconds apart, so its ratio is the figure; the medians are reported beside it, and
`host_yardstick_ms` (a fixed Python loop, before and after) says how quick the host was.

    python -m bench.rpc_side_by_side --base REV --json [--clients 4] [--pairs 6] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.common import emit, host_yardstick_ms, private_server, scratch_database, settle
from bench.rpc_throughput import pgbench_path, prepare_pgbench_clients, run_pgbench
from velocity.db import SQL_DIR, Database

REPOSITORY = SQL_DIR.parent


def export_migrations(revision: str, target: Path) -> Path:
    """The `sql/*.sql` files of `revision`, written under `target`; ValueError if git does not
    know the revision or it has no migrations."""
    listed = subprocess.run(["git", "-C", str(REPOSITORY), "ls-tree", "--name-only",
                             f"{revision}:sql"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise ValueError(f"--base {revision}: {listed.stderr.strip() or 'not a git revision'}")
    names = [name for name in listed.stdout.split() if name.endswith(".sql")]
    if not names:
        raise ValueError(f"--base {revision}: it has no sql/*.sql migrations")
    directory = target / "sql"
    directory.mkdir()
    for name in names:
        text = subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{revision}:sql/{name}"],
                              capture_output=True, check=True).stdout
        (directory / name).write_bytes(text)
    return directory


def measure(base: Path, clients: int, pairs: int, seconds: float) -> dict:
    with private_server() as server, \
            scratch_database(server, base, "bench_base") as base_url, \
            scratch_database(server, SQL_DIR, "bench_head") as head_url, \
            Database(base_url, max_size=2) as base_db, Database(head_url, max_size=2) as head_db:
        for db in (base_db, head_db):
            with db.transaction() as conn:
                conn.execute("UPDATE internal.config SET rate_limit_burst = 1000000,"
                             " rate_limit_per_second = 1000000")
            prepare_pgbench_clients(db, clients, shared_project=False)
        runs = []
        for _ in range(pairs):
            pair = {}
            for side, db, url in (("base", base_db, base_url), ("head", head_db, head_url)):
                settle(db)
                pair[side] = run_pgbench(url, clients, seconds)["upserts_per_second"]
            pair["ratio"] = round(pair["head"] / pair["base"], 3)
            runs.append(pair)
    return {
        "clients": clients,
        "seconds_per_run": seconds,
        "pairs": runs,
        "base_upserts_per_second_median": statistics.median(run["base"] for run in runs),
        "head_upserts_per_second_median": statistics.median(run["head"] for run in runs),
        "ratio_median": statistics.median(run["ratio"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, metavar="REV",
                        help="git revision whose sql/ the working tree's is compared with")
    parser.add_argument("--clients", type=int, default=4, help="concurrent pgbench clients")
    parser.add_argument("--pairs", type=int, default=6, help="runs of each side, alternated")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.pairs < 1 or args.seconds < 1:
        parser.error("--clients and --pairs must be at least 1, --seconds at least 1")
    if pgbench_path() is None:
        parser.error("pgbench is not installed (it comes with PostgreSQL's client programs)")
    with tempfile.TemporaryDirectory(prefix="velocity-side-by-side-") as temp:
        try:
            base = export_migrations(args.base, Path(temp))
        except ValueError as error:
            parser.error(str(error))
        before = host_yardstick_ms()
        figures = {"base": args.base, **measure(base, args.clients, args.pairs, args.seconds),
                   "host_yardstick_ms": {"before": before, "after": host_yardstick_ms()}}
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
