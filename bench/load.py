"""Load: many sessions edited steadily for minutes while one user floods the RPC endpoint.

The gateway runs as a real `velocity serve` process; 100 agents run on the process runtime,
each following its own project. One writer edits every project at 2 edits/s through
`upsert_project_file` (as the service) and inotify, in its own process, sees each edit land
on the agent's disk. Meanwhile one user floods `POST /rest/v1/rpc/upsert_project_file` on
the same service as fast as a few clients can; the rate limit (burst 100, 20 writes/s per
user and project) must throttle them without delaying or losing anyone else's events.
Reported: latency percentiles per time window, gateway and agent RSS at start and end (and
the gateway's each window: it holds the last 64 events of each watched project, so it grows
until those windows are full, then stays flat), the flood's accepted and throttled writes,
and events lost (every agent's applied seq and file against the database at the end: must be
0).

    python -m bench.load --json [--sessions 100] [--rate 2] [--duration 300] [--window 30]
                         [--flood-clients 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import emit, percentiles, scratch_database
from bench.edit_latency import EDITED_FILE, Edit, Pace, Phase, WatcherProcess, match_landings
from bench.gateway_capacity import free_port, rss_mib

FLOOD_FILE = "flood.txt"


def group_rss_mib(runtime_root: Path, container_id: str) -> float:
    """RSS of every process of one process-runtime container (init, agent, dev server)."""
    from velocity.runtimes.process import RECORD_FILE, ProcessRecord, processes

    record = ProcessRecord.model_validate_json(
        (runtime_root / container_id / RECORD_FILE).read_bytes())
    return round(sum(rss_mib(pid) for pid, stat in processes() if stat.pgrp == record.pgid), 1)


def by_window(samples: list[tuple[float, float]], started: float, window: float
              ) -> list[dict[str, Any]]:
    windows: dict[int, list[float]] = {}
    for at, latency in samples:
        windows.setdefault(int((at - started) // window), []).append(latency)
    return [{"from_s": round(n * window), "edits": len(values), **percentiles(values)}
            for n, values in sorted(windows.items())]


def _flood(url: str, token: str, project: str, seconds: float, clients: int, pipe: Any) -> None:
    """One user's clients writing as fast as they can; counts of each HTTP status."""
    counts: Counter[int] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "apikey": "anon"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                reply = http.post("/rest/v1/rpc/upsert_project_file", json={
                    "project_uuid": project, "p_file_path": FLOOD_FILE,
                    "p_content": f"flood {number}-{n} {uuid.uuid4()}"})
                with lock:
                    counts[reply.status_code] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pipe.send(dict(counts))


class Flood:
    def __init__(self, url: str, token: str, project: uuid.UUID, seconds: float,
                 clients: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._parent, child = context.Pipe()
        self._process = context.Process(
            target=_flood, args=(url, token, str(project), seconds, clients, child), daemon=True)
        self._process.start()

    def result(self) -> dict[int, int]:
        counts: dict[int, int] = self._parent.recv()
        self._process.join(timeout=30)
        return counts


def applied_seq(runtime: Any, container_id: str) -> int | None:
    try:
        reply = httpx.get(runtime.status(container_id).health_url, timeout=5)
        return reply.json().get("applied_seq")
    except (httpx.HTTPError, ValueError):
        return None


def events_lost(stack: dict[str, Any], previews: list[Any], settle_seconds: float
                ) -> dict[str, int]:
    """Per session, the events the agent has not applied once the run has settled, and the
    sessions whose edited file differs from the database."""
    db, runtime = stack["db"], stack["runtime"]
    with db.transaction() as conn:
        heads = dict(conn.execute(
            "SELECT id, last_event_seq FROM projects WHERE id = ANY(%s)",
            ([p.project_id for p in previews],)).fetchall())
    deadline = time.monotonic() + settle_seconds
    behind: dict[Any, int] = {}
    while True:
        behind = {}
        for preview in previews:
            seq = applied_seq(runtime, preview.container.container_id)
            head = heads[preview.project_id]
            if seq is None or seq < head:
                behind[preview.session_id] = head - (seq or 0)
        if not behind or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # polling the agents' reports, with a deadline
    mismatches = 0
    with db.transaction() as conn:
        current = dict(conn.execute(
            "SELECT project_id || ':' || file_path, content FROM project_files_current"
            " WHERE project_id = ANY(%s) AND file_path IN (%s, %s)",
            ([p.project_id for p in previews], EDITED_FILE, FLOOD_FILE)).fetchall())
    for preview in previews:
        for name in (EDITED_FILE, FLOOD_FILE):
            expected = current.get(f"{preview.project_id}:{name}")
            if expected is None:
                continue
            path = preview.project_dir / name
            mismatches += not path.exists() or path.read_text() != expected
    return {"events_lost": sum(behind.values()), "sessions_behind": len(behind),
            "final_state_mismatches": mismatches}


def rss_snapshot(stack: dict[str, Any], gateway_pid: int, previews: list[Any]) -> dict[str, Any]:
    agents = [group_rss_mib(stack["runtime_root"], p.container.container_id) for p in previews]
    return {"gateway_mib": rss_mib(gateway_pid), "agents_total_mib": round(sum(agents), 1),
            "agent_median_mib": round(statistics.median(agents), 1),
            "agent_max_mib": round(max(agents), 1)}


def run_load(stack: dict[str, Any], gateway_pid: int, args: argparse.Namespace
             ) -> dict[str, Any]:
    from tests.preview import start_preview
    from velocity import accounts
    from velocity.tokens import mint_user_token

    db, settings = stack["db"], stack["settings"]
    phase = Phase(stack, args.sessions, files=10)
    flooder = accounts.create_user(db, f"flood-{uuid.uuid4().hex[:6]}@example.test")
    flood_project = accounts.create_project(db, "flood", flooder)
    phase.files.bulk_upsert(flood_project, [{"file_path": FLOOD_FILE, "content": "start"}])
    flood_preview = start_preview(db, stack["store"], settings, stack["runtime"],
                                  stack["runtime_root"], flood_project, flooder)
    previews = [*phase.previews, flood_preview]
    try:
        deadline = time.monotonic() + 120
        while not (flood_preview.project_dir / FLOOD_FILE).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the flooded project's agent did not hydrate in time")
            time.sleep(0.05)  # polling for hydration, with a deadline
        rss_start = rss_snapshot(stack, gateway_pid, previews)
        directories = [(p.project_dir / EDITED_FILE).parent for p in phase.previews]
        watcher = WatcherProcess(directories, Path(EDITED_FILE).name)
        token = mint_user_token(flooder, int(args.duration) + 600, settings)
        flood = Flood(settings.public_url, token, flood_project, args.duration,
                      args.flood_clients)
        edits: list[Edit] = []
        pace = Pace(1.0 / (args.rate * len(phase.previews)))
        gateway_rss: list[dict[str, float]] = []
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            if len(gateway_rss) * args.window <= time.monotonic() - started:
                gateway_rss.append({"at_s": round(time.monotonic() - started),
                                    "mib": rss_mib(gateway_pid)})
            edits.append(phase.edit(len(edits)))
            pace.wait()
        written_for = time.monotonic() - started
        flood_counts = flood.result()
        landings = watcher.stop(settle_seconds=3)
        lost = events_lost(stack, previews, settle_seconds=60)
        rss_end = rss_snapshot(stack, gateway_pid, previews)
    finally:
        phase.stop()
        stack["runtime"].stop(flood_preview.container.container_id, timeout=5, remove=True)
    matched = match_landings(edits, landings)
    accepted = flood_counts.get(200, 0)
    return {
        "sessions": args.sessions, "rate_per_session": args.rate,
        "duration_s": round(written_for, 1), "edits": len(edits),
        "edits_per_s": round(len(edits) / written_for, 1),
        "landed": len(matched.samples), "not_landed": matched.not_landed,
        "landed_before_rpc_returned": matched.before_return,
        "latency_ms": percentiles([latency for _, latency in matched.samples]),
        "latency_ms_by_window": by_window(matched.samples, started, args.window),
        "flood": {"clients": args.flood_clients, "requests": sum(flood_counts.values()),
                  "accepted": accepted, "throttled_429": flood_counts.get(429, 0),
                  "other_statuses": {str(k): v for k, v in flood_counts.items()
                                     if k not in (200, 429)},
                  "accepted_per_s": round(accepted / written_for, 1)},
        **lost,
        "rss_start": rss_start, "rss_end": rss_end, "gateway_rss_by_window": gateway_rss,
        "gateway_rss_growth_mib": round(rss_end["gateway_mib"] - rss_start["gateway_mib"], 1),
        "agents_rss_growth_mib": round(rss_end["agents_total_mib"]
                                       - rss_start["agents_total_mib"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sessions", type=int, default=100, help="sessions (one project each)")
    parser.add_argument("--rate", type=float, default=2.0, help="edits per second per session")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of editing")
    parser.add_argument("--window", type=float, default=30.0,
                        help="seconds per latency window in the report")
    parser.add_argument("--flood-clients", type=int, default=2,
                        help="concurrent HTTP clients of the flooding user")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (CREATEDB needed)")
    args = parser.parse_args()

    from tests.chaos.services import ServiceProcess
    from velocity.db import Database
    from velocity.runtimes import ProcessRuntime
    from velocity.settings import Settings
    from velocity.storage import open_store

    with scratch_database(args.database_url) as url, Database(url, max_size=4) as db:
        home = Path(tempfile.mkdtemp(prefix="velocity-bench-load-"))
        os.chmod(home, 0o755)
        port = free_port()
        settings = Settings(home=home, database_url=url, public_url=f"http://127.0.0.1:{port}")
        gateway = ServiceProcess(settings, port, home / "gateway.log")
        runtime_root = home / "runtimes"
        stack = {"db": db, "settings": settings, "store": open_store(settings),
                 "runtime": ProcessRuntime(runtime_root), "runtime_root": runtime_root}
        gateway.start()
        try:
            assert gateway.pid is not None
            figures = run_load(stack, gateway.pid, args)
        finally:
            gateway.stop()
        shutil.rmtree(home, ignore_errors=True)  # kept when the run fails: its logs tell why
    emit(figures, args.json)


if __name__ == "__main__":
    main()
