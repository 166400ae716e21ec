"""LocalRunner against a real Prefect server: shutting the API down lets running flows
finish, so their final states (and logs) reach Prefect before Prefect itself is stopped."""

from __future__ import annotations

import asyncio
import threading

from prefect import flow
from prefect.client.orchestration import get_client

from flows.catalogue import Workflow
from orchestrator.workflows import LocalRunner

started = threading.Event()
release = threading.Event()


@flow(name="held-test-flow")
def held_flow() -> str:
    started.set()
    if not release.wait(timeout=60):
        raise TimeoutError("the test never released the flow")
    return "done"


HELD = Workflow("held-test-flow", __name__, "held_flow")


async def _final_state(flow_run_id) -> str:
    async with get_client() as client:
        return (await client.read_flow_run(flow_run_id)).state.type.value


def test_closing_the_runner_waits_for_running_flows_to_finish(prefect_server):
    async def scenario() -> str:
        runner = LocalRunner()
        flow_run_id = await runner.submit(HELD, {})
        assert await asyncio.to_thread(started.wait, 60), "the flow never started"
        closing = asyncio.create_task(runner.aclose())
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        assert not done, "aclose returned while a flow was still running"
        release.set()
        await asyncio.wait_for(closing, timeout=60)
        return await _final_state(flow_run_id)

    assert asyncio.run(scenario()) == "COMPLETED"
