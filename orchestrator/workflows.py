"""How the API starts a flow: in this process, or on a worker through its deployment.

The API and webhooks call `WorkflowRunner.submit` and get a flow run id back at once; they
never know where the run executes. `VELOCITY_WORKFLOW_RUNNER` chooses the adapter: `local`
(the embedded default: no worker, no poll interval between the request and the run) or
`deployment` (scale-out: workers in work pools pick the run up). See docs/orchestration.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any, Protocol
from uuid import UUID

import httpx
from prefect import Flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound, ParameterTypeError, SignatureMismatchError
from prefect.flow_engine import run_flow, run_flow_async
from prefect.states import State

from flows.catalogue import Workflow
from velocity.errors import InvalidInput, VelocityError
from velocity.settings import Settings

log = logging.getLogger("velocity.orchestrator")

# Flows started in process at once; later ones wait for a free thread (Pending in Prefect).
LOCAL_MAX_CONCURRENT_RUNS = 16
# How long shutting the API down waits for flows running in process to finish.
LOCAL_DRAIN_SECONDS = 30.0

FinishedHook = Callable[[Workflow, UUID, State[Any]], Awaitable[None]]
"""Called in the API's event loop after a locally run flow reaches a final state."""


class InvalidParameters(InvalidInput):
    """The parameters do not fit the flow's signature: the run would fail at once."""

    code = "invalid_parameters"
    http_status = 422


class WorkflowUnavailable(VelocityError):
    """Prefect could not take the run (API unreachable, deployment missing): retry later."""

    code = "workflow_unavailable"
    http_status = 503


class WorkflowRunner(Protocol):
    """Starts flow runs. `submit` returns the flow run id immediately; it never waits for
    the run, which is recorded in Prefect and visible in its UI wherever it executes."""

    async def submit(self, workflow: Workflow, parameters: dict[str, Any]) -> UUID: ...

    async def aclose(self) -> None: ...


def checked_flow(workflow: Workflow, parameters: dict[str, Any]) -> Flow[Any, Any]:
    """The workflow's flow, once `parameters` are known to fit its signature.

    Block references (`{"$ref": ...}`) are refused: Prefect would resolve them when
    validating, and a webhook body must never make the service load a stored block.
    """
    if _has_block_reference(parameters):
        raise InvalidParameters("block references are not accepted as parameters",
                                workflow=workflow.name)
    flow = workflow.load()
    try:
        flow.validate_parameters(dict(parameters))
    except (ParameterTypeError, SignatureMismatchError) as error:
        raise InvalidParameters(f"parameters of {workflow.name}: {error}",
                                workflow=workflow.name) from None
    return flow


def _has_block_reference(value: Any) -> bool:
    if isinstance(value, dict):
        return "$ref" in value or any(_has_block_reference(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_block_reference(item) for item in value)
    return False


class _PrefectConnection:
    """One Prefect client per runner, opened on first use (an app that never starts a flow
    never needs a Prefect API) and closed with the runner."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._client: PrefectClient | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> PrefectClient:
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(get_client())
            return self._client

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None


class LocalRunner:
    """Creates the flow run through the Prefect API, then runs it on a thread of this process.

    The run and its task runs are recorded in Prefect like any other; only the executor is
    local. A thread (not the API's event loop) keeps a flow's blocking steps — database
    calls, waiting for an agent — from stalling requests.
    """

    def __init__(self, on_finished: FinishedHook | None = None,
                 max_concurrent_runs: int = LOCAL_MAX_CONCURRENT_RUNS) -> None:
        self._on_finished = on_finished
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent_runs,
                                            thread_name_prefix="velocity-flow")
        self._runs: set[asyncio.Task[None]] = set()
        self._prefect = _PrefectConnection()

    async def submit(self, workflow: Workflow, parameters: dict[str, Any]) -> UUID:
        flow = checked_flow(workflow, parameters)
        try:
            client = await self._prefect.client()
            flow_run = await client.create_flow_run(flow, parameters=parameters,
                                                    tags=list(workflow.tags or ()))
        except httpx.HTTPError as error:
            raise WorkflowUnavailable(f"Prefect did not accept a run of {workflow.name}: "
                                      f"{error}", workflow=workflow.name) from error
        run = asyncio.get_running_loop().create_task(
            self._run(workflow, flow, flow_run, parameters), name=f"flow-run-{flow_run.id}")
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return flow_run.id

    async def _run(self, workflow: Workflow, flow: Flow[Any, Any], flow_run: FlowRun,
                   parameters: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(self._executor, _execute, flow, flow_run,
                                               parameters)
        except Exception:  # noqa: BLE001 - the engine failed outside the run; say so
            log.exception("flow run %s of %s could not be executed", flow_run.id,
                          workflow.name)
            return
        if self._on_finished is not None:
            try:
                await self._on_finished(workflow, flow_run.id, state)
            except Exception:  # noqa: BLE001 - a metrics hook must never fail a run
                log.exception("after flow run %s of %s", flow_run.id, workflow.name)

    async def aclose(self) -> None:
        """Stop taking runs: runs not yet started are dropped, running ones get
        `LOCAL_DRAIN_SECONDS` to finish, so their final states and logs reach Prefect
        before whoever stops the API stops Prefect too."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._runs:
            _, unfinished = await asyncio.wait(set(self._runs), timeout=LOCAL_DRAIN_SECONDS)
            for run in unfinished:
                log.warning("flow run %s still running at shutdown", run.get_name())
                run.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self._prefect.aclose()


def _execute(flow: Flow[Any, Any], flow_run: FlowRun, parameters: dict[str, Any]) -> State[Any]:
    """Run one flow run to a final state, on the calling (worker) thread."""
    if flow.isasync:
        state = asyncio.run(run_flow_async(flow, flow_run=flow_run, parameters=parameters,
                                           return_type="state"))
    else:
        state = run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")
    assert isinstance(state, State)
    return state


class DeploymentRunner:
    """Creates a run of the workflow's deployment (`{name}/{name}`, as deployments/ defines
    them) and returns; a worker polling the deployment's work pool executes it."""

    def __init__(self) -> None:
        self._prefect = _PrefectConnection()

    async def submit(self, workflow: Workflow, parameters: dict[str, Any]) -> UUID:
        checked_flow(workflow, parameters)
        deployment = f"{workflow.name}/{workflow.name}"
        try:
            client = await self._prefect.client()
            flow_run = await arun_deployment(name=deployment, client=client,
                                             parameters=parameters, timeout=0,
                                             as_subflow=False)
        except ObjectNotFound:
            raise WorkflowUnavailable(f"no deployment {deployment!r}: deploy the workflows "
                                      "first (prefect deploy --all)",
                                      workflow=workflow.name) from None
        except httpx.HTTPError as error:
            raise WorkflowUnavailable(f"Prefect did not accept a run of {deployment}: {error}",
                                      workflow=workflow.name) from error
        return flow_run.id

    async def aclose(self) -> None:
        await self._prefect.aclose()


def make_runner(settings: Settings, on_finished: FinishedHook | None = None) -> WorkflowRunner:
    """The runner `settings.workflow_runner` names."""
    if settings.workflow_runner == "deployment":
        return DeploymentRunner()
    return LocalRunner(on_finished=on_finished)
