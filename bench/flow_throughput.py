"""Flow runs per minute: how many provision-shaped flow runs one Prefect server on PostgreSQL
records, with the flows executed in this process as the API's local runner does.

The embedded stack starts a private PostgreSQL and `prefect server start` on it. A flow of
seven no-op tasks (the shape of provision-session: create row, ensure files, snapshot, sign,
token, start container, wait ready) is run back to back from `--concurrency` threads for
`--seconds`; every run and task run is recorded by the server, so the figure is Prefect's
bookkeeping capacity, the ceiling for session starts and stops per Prefect server.

    python -m bench.flow_throughput --json [--concurrency 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import emit, percentiles

STEPS = 7


def provision_shaped_flow() -> Any:
    from prefect import flow, task

    @task
    def step(n: int) -> int:
        return n

    @flow(name="bench-provision-shaped", log_prints=False)
    def provision_shaped() -> int:
        return sum(step(n) for n in range(STEPS))

    return provision_shaped


def measure(concurrency: int, seconds: float) -> dict[str, Any]:
    flow = provision_shaped_flow()
    flow()  # warm up: the flow's registration and the client's first connection
    durations: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def runner() -> None:
        while time.monotonic() < deadline:
            began = time.monotonic()
            flow()
            with lock:
                durations.append(time.monotonic() - began)

    started = time.monotonic()
    threads = [threading.Thread(target=runner) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {"concurrency": concurrency, "runs": len(durations),
            "runs_per_minute": round(len(durations) / elapsed * 60),
            "task_runs_per_second": round(len(durations) * STEPS / elapsed, 1),
            "run_seconds": percentiles(durations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated thread counts")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    from orchestrator.stack import EmbeddedStack
    from velocity.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="velocity-bench-flows-"))
    os.chmod(home, 0o755)
    os.environ.pop("PREFECT_API_URL", None)  # always a fresh server on our PostgreSQL
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # one JSON line on stdout
    stack = EmbeddedStack(Settings(home=home))
    figures: dict[str, Any] = {"steps_per_run": STEPS, "prefect_database": "postgresql"}
    try:
        stack.start_database()
        stack.start_prefect()
        figures["by_concurrency"] = [measure(int(c), args.seconds)
                                     for c in args.concurrency.split(",") if c]
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
