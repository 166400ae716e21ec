"""How long the API waits to start a flow, and how long until the flow runs: local vs worker.

Against a private Prefect server (the test harness: a subprocess server on SQLite), a flow
that does nothing is started `--runs` times through each adapter of orchestrator/workflows.py:

- `local`: `LocalRunner.submit` (create the run, hand it to a thread of this process);
- `deployment`: `DeploymentRunner.submit` (`run_deployment(timeout=0)`) with a process worker
  (`prefect worker start --type process`) polling the work pool every `--poll` seconds.

For each: the submit call's latency (what an API request pays), and the start latency, from
the submit call to the run's `start_time` as Prefect recorded it (what a user waits before
the first step of, say, provision-session). Each run finishes before the next is submitted,
so runs never compete with a submission. Times in milliseconds.

    python -m bench.submission_latency --json [--runs 20] [--worker-runs 5] [--poll 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from bench.common import emit, percentiles
from flows.catalogue import Workflow
from orchestrator.workflows import DeploymentRunner, LocalRunner

POOL = "bench-submission"
NOOP = Workflow("bench-noop", "bench.submission_latency", "noop")


@flow(name="bench-noop")
def noop() -> None:
    """Does nothing: everything measured is the orchestration around it."""


async def _finished(flow_run_id: UUID, timeout: float) -> datetime:
    """When the run started, once it has finished (so runs never overlap the next submit)."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                assert run.start_time is not None, run.state
                return run.start_time
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} did not finish in {timeout}s")
            await asyncio.sleep(0.05)  # polling Prefect's record: a measurement, not a sync


async def _measure(runner: Any, runs: int, timeout: float) -> dict[str, Any]:
    submit_ms: list[float] = []
    start_ms: list[float] = []
    for _ in range(runs):
        wall = time.time()
        began = time.perf_counter()
        flow_run_id = await runner.submit(NOOP, {})
        submit_ms.append((time.perf_counter() - began) * 1000)
        started = await _finished(flow_run_id, timeout)
        start_ms.append((started.timestamp() - wall) * 1000)
    return {"runs": runs, "submit_ms": percentiles(submit_ms),
            "submit_ms_mean": round(sum(submit_ms) / runs, 2),
            "start_ms": percentiles(start_ms), "start_ms_mean": round(sum(start_ms) / runs, 1)}


async def _local(runs: int) -> dict[str, Any]:
    runner = LocalRunner()
    await runner.submit(NOOP, {})  # warm: client connection, flow import
    try:
        return await _measure(runner, runs, timeout=30)
    finally:
        await runner.aclose()


async def _deployment(runs: int, poll: float) -> dict[str, Any]:
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"),
                                      overwrite=True)
    deployment = await noop.ato_deployment(name=NOOP.name, work_pool_name=POOL)
    await deployment.aapply()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_WORKER_QUERY_SECONDS": str(poll)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
         "process", "--limit", "1"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    runner = DeploymentRunner()
    try:
        await _finished(await runner.submit(NOOP, {}), timeout=120)  # the worker is up
        return {"poll_seconds": poll, **await _measure(runner, runs, timeout=poll * 3 + 60)}
    finally:
        await runner.aclose()
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.submission_latency",
                                     description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--worker-runs", type=int, default=5)
    parser.add_argument("--poll", type=float, default=10.0,
                        help="the worker's PREFECT_WORKER_QUERY_SECONDS (Prefect's default 10)")
    args = parser.parse_args()
    with prefect_test_harness(server_startup_timeout=60):
        figures = {"local": asyncio.run(_local(args.runs))}
        if args.worker_runs > 0:
            figures["deployment"] = asyncio.run(_deployment(args.worker_runs, args.poll))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
