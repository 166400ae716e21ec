"""Single-file upserts per second at 1, 4 and 16 concurrent clients, and a 1,000-file bulk.

Each client is a user editing their own project through `upsert_project_file`, acting as that
user exactly as the API does (role and JWT claims per transaction, RLS and membership checks
on). Two drivers: `pgbench` (C, prepared statements: the database's capacity) and our Python
client `velocity.files.FileClient` from threads (what one Python process reaches; the GIL and
the pool cost show there). The rate limit is raised for the run: it would otherwise cap each
user at 20 writes/s, which is its point and not what this measures. A 16-clients-on-one-
project figure shows the cost of the per-project write lock. Each figure starts from the
same state: the previous one's dirty pages written out by a checkpoint (else the checkpointer
writes them during the next) and the machine quiet. `host_yardstick_ms` (a fixed Python loop,
before and after) says how quick the shared host was: figures move with it.

    python -m bench.rpc_throughput --json [--seconds 5] [--runs 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from bench.common import emit, host_yardstick_ms, percentiles, scratch_database, settle
from velocity import accounts
from velocity.cluster import find_bin_dir
from velocity.db import Actor, Database
from velocity.files import FileClient


def measure_upserts(db: Database, clients: int, seconds: float, shared_project: bool) -> dict:
    owners = [accounts.create_user(db, f"bench-{uuid.uuid4().hex[:10]}@example.test")
              for _ in range(clients)]
    if shared_project:
        project = accounts.create_project(db, "bench shared", owners[0],
                                          [(user, "editor") for user in owners[1:]])
        projects = [project] * clients
    else:
        projects = [accounts.create_project(db, "bench", user) for user in owners]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        files = FileClient(db, Actor.user(owners[index]))
        path = f"src/client{index}/App.tsx"
        barrier.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            files.upsert(projects[index], path, f"export const edit = {n};\n")
            latencies[index].append((time.perf_counter() - started) * 1000)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    samples = [value for per_client in latencies for value in per_client]
    return {"upserts_per_second": round(len(samples) / elapsed, 1),
            "latency_ms": percentiles(samples)}


PGBENCH_SCRIPT = """\
\\set n random(1, 1000000000)
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims',
  (SELECT json_build_object('sub', user_id)::text FROM bench_clients WHERE client = :client_id),
  true);
SELECT version FROM upsert_project_file(
  (SELECT project_id FROM bench_clients WHERE client = :client_id),
  'src/App.tsx', 'export const n = ' || :n || ';');
COMMIT;
"""


def measure_pgbench(db: Database, url: str, clients: int, seconds: float,
                    shared_project: bool) -> dict | None:
    """Upserts/s with pgbench as the client, each a new user; None without pgbench."""
    if pgbench_path() is None:
        return None
    prepare_pgbench_clients(db, clients, shared_project)
    return run_pgbench(url, clients, seconds)


def pgbench_path() -> str | None:
    pgbench = shutil.which("pgbench") or str(find_bin_dir() / "pgbench")
    return pgbench if Path(pgbench).exists() else None


def prepare_pgbench_clients(db: Database, clients: int, shared_project: bool) -> None:
    """New users, each with their own project (or members of one), in `bench_clients`."""
    owners = [accounts.create_user(db, f"pgb-{uuid.uuid4().hex[:10]}@example.test")
              for _ in range(clients)]
    if shared_project:
        shared = accounts.create_project(db, "pgbench shared", owners[0],
                                         [(user, "editor") for user in owners[1:]])
        projects = [shared] * clients
    else:
        projects = [accounts.create_project(db, "pgbench", user) for user in owners]
    with db.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.bench_clients"
                     " (client int PRIMARY KEY, user_id uuid, project_id uuid)")
        conn.execute("GRANT SELECT ON public.bench_clients TO authenticated")
        conn.execute("TRUNCATE public.bench_clients")
        for client, (user, project) in enumerate(zip(owners, projects, strict=True)):
            conn.execute("INSERT INTO public.bench_clients VALUES (%s, %s, %s)",
                         (client, user, project))


def run_pgbench(url: str, clients: int, seconds: float) -> dict:
    """One pgbench run of PGBENCH_SCRIPT by the clients in `bench_clients`."""
    pgbench = pgbench_path()
    if pgbench is None:
        raise RuntimeError("pgbench is not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    params = conninfo_to_dict(url)
    env = {**os.environ, "PGPASSWORD": str(params.get("password", ""))}
    command = [pgbench, "-n", "-M", "prepared", "-f", script.name, "-c", str(clients),
               "-j", str(min(clients, 2)), "-T", str(max(1, round(seconds))),
               "-h", str(params.get("host", "127.0.0.1")), "-p", str(params.get("port", 5432)),
               "-U", str(params.get("user", "postgres")), str(params["dbname"])]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    finally:
        os.unlink(script.name)
    tps = float(re.search(r"tps = ([0-9.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    latency = re.search(r"latency average = ([0-9.]+) ms", result.stdout)
    return {"upserts_per_second": round(tps, 1),
            "latency_ms_average": float(latency.group(1)) if latency else None}


def measure_bulk(db: Database, files_count: int) -> float:
    owner = accounts.create_user(db, f"bulk-{uuid.uuid4().hex[:10]}@example.test")
    project = accounts.create_project(db, "bench bulk", owner)
    files = [{"file_path": f"src/components/c{i // 100}/Component{i}.tsx",
              "content": f"export function Component{i}() {{ return <div>{i}</div>; }}\n" * 20}
             for i in range(files_count)]
    client = FileClient(db, Actor.user(owner))
    started = time.perf_counter()
    result = client.bulk_upsert(project, files)
    elapsed = time.perf_counter() - started
    assert result.changed == files_count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one line of JSON")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; medians reported")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (CREATEDB needed); "
                        "default: a private durable cluster")
    args = parser.parse_args()

    yardstick_before = host_yardstick_ms()
    with scratch_database(args.database_url) as url, Database(url, max_size=20) as db:
        with db.transaction() as conn:
            conn.execute("UPDATE internal.config SET rate_limit_burst = 1000000,"
                         " rate_limit_per_second = 1000000")
        figures: dict = {"seconds_per_run": args.seconds, "runs": args.runs,
                         "upserts_pgbench": {}, "upserts_python_client": {}}
        cases = [(1, False), (4, False), (16, False), (16, True)]
        for clients, shared in cases:
            key = f"{clients}_clients" + ("_one_project" if shared else "")
            settle(db)
            server_runs = [measure_pgbench(db, url, clients, args.seconds, shared)
                           for _ in range(args.runs)]
            if server_runs[0] is not None:
                rates = [run["upserts_per_second"] for run in server_runs if run]
                figures["upserts_pgbench"][key] = {
                    "upserts_per_second_median": statistics.median(rates),
                    "upserts_per_second_runs": rates,
                }
            settle(db)
            runs = [measure_upserts(db, clients, args.seconds, shared) for _ in range(args.runs)]
            rates = [run["upserts_per_second"] for run in runs]
            figures["upserts_python_client"][key] = {
                "upserts_per_second_median": statistics.median(rates),
                "upserts_per_second_runs": rates,
                "latency_ms_median_run": sorted(runs, key=lambda r: r["upserts_per_second"])[
                    len(runs) // 2]["latency_ms"],
            }
        settle(db)
        bulk = [measure_bulk(db, 1000) for _ in range(args.runs)]
        figures["bulk_1000_files_seconds"] = {"median": round(statistics.median(bulk), 4),
                                              "runs": [round(value, 4) for value in bulk]}
    figures["host_yardstick_ms"] = {"before": yardstick_before, "after": host_yardstick_ms()}
    emit(figures, args.json)


if __name__ == "__main__":
    main()
