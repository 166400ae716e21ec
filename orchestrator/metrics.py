"""Prometheus metrics of one service process, served at `/metrics`.

The names are a contract: dashboards and alert rules in deployments/ query them.
Each app owns its registry, so several apps in one process (tests) never share counts.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
from prefect.states import State
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from flows.catalogue import PROVISION_SESSION, Workflow
from velocity.realtime.hub import Hub

SNAPSHOT_TASK_NAME = "build-snapshot"  # the task's name in tasks/snapshots.py
OBSERVED_SESSIONS_KEPT = 10_000
READ_LIMIT = 200  # task runs of one flow run and its direct subflows


class Metrics:
    """The service's metrics and the places that feed them."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        self.snapshot_build_seconds = Histogram(
            "velocity_snapshot_build_seconds",
            "Time to build (or reuse) a project snapshot.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry)
        self.session_start_seconds = Histogram(
            "velocity_session_start_seconds",
            "From a session's creation to its first report as active.",
            buckets=(0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120),
            registry=self.registry)
        self.event_lag_ms = Histogram(
            "velocity_event_lag_ms",
            "Lag between an event's commit and its application in a preview, as agents "
            "report it.",
            buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000),
            registry=self.registry)
        self.connected_agents = Gauge(
            "velocity_connected_agents",
            "Preview agents subscribed to this gateway process.",
            registry=self.registry)
        self.connected_agents.set_function(lambda: hub.connected_agents)
        self.rpc_requests = Counter(
            "velocity_rpc_requests",
            "Calls of /rest/v1/rpc, any outcome, by function ('unknown' for other names).",
            ["function"], registry=self.registry)
        self.rpc_errors = Counter(
            "velocity_rpc_errors",
            "Failed calls of /rest/v1/rpc, by PostgREST error code (SQLSTATE or PGRST...).",
            ["code"], registry=self.registry)
        self.gc_pause_seconds = Histogram(
            "velocity_gc_pause_seconds",
            "Python garbage collections of this process, by generation: a collection stops "
            "every request and event in flight.",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
            registry=self.registry)
        self._gc_started = 0.0
        self._started_sessions: OrderedDict[UUID, None] = OrderedDict()

    def watch_gc(self) -> None:
        gc.callbacks.append(self._time_gc)

    def unwatch_gc(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._time_gc)

    def _time_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause_seconds.labels(str(info["generation"])).observe(
                time.perf_counter() - self._gc_started)

    def observe_session_start(self, session_id: UUID, created_at: datetime,
                              active_at: datetime | None = None) -> None:
        """Once per session: the time from its row's creation to being seen active."""
        if session_id in self._started_sessions:
            return
        self._started_sessions[session_id] = None
        if len(self._started_sessions) > OBSERVED_SESSIONS_KEPT:
            self._started_sessions.popitem(last=False)
        seconds = ((active_at or datetime.now(UTC)) - created_at).total_seconds()
        self.session_start_seconds.observe(max(seconds, 0.0))

    def observe_agent_status(self, status: dict[str, Any]) -> None:
        lag = status.get("lag_ms")
        if isinstance(lag, int | float) and not isinstance(lag, bool) and lag >= 0:
            self.event_lag_ms.observe(lag)

    def watch_hub(self, hub: Hub) -> None:
        """Feed agent lag and re-hydration snapshot builds from the gateway in this process."""
        record_status = hub.record_status

        def record_and_observe(session_id: UUID, status: dict[str, Any]) -> None:
            self.observe_agent_status(status)
            record_status(session_id, status)

        hub.record_status = record_and_observe  # type: ignore[method-assign]
        builder = hub.snapshot_builder
        if builder is not None:
            def timed_build(project_id: UUID) -> dict[str, Any]:
                with self.snapshot_build_seconds.time():
                    return builder(project_id)

            hub.snapshot_builder = timed_build

    async def observe_flow_run(self, workflow: Workflow, flow_run_id: UUID,
                               state: State[Any]) -> None:
        """After a flow ran in this process: the durations of its snapshot builds and, for
        provisioning, the session's start time (ending now, as the run just made it active).

        Builds are read back from Prefect (the run's own task runs and those of its direct
        subflows), so any flow that builds a snapshot is measured without knowing metrics.
        """
        if workflow.name == PROVISION_SESSION.name and state.is_completed():
            await self._observe_provisioned(state)
        async with get_client() as client:
            # Sort and limit are explicit: this client sends nulls for them otherwise, which
            # the server refuses (422).
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])),
                sort=FlowRunSort.ID_DESC, limit=READ_LIMIT)
            ids = [flow_run_id, *(run.id for run in runs)]
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=READ_LIMIT)
        for task_run in task_runs:
            if (task_run.name.rsplit("-", 1)[0] == SNAPSHOT_TASK_NAME
                    and task_run.state is not None and task_run.state.is_completed()):
                self.snapshot_build_seconds.observe(task_run.total_run_time.total_seconds())

    async def _observe_provisioned(self, state: State[Any]) -> None:
        session = await state.aresult(raise_on_failure=False)
        if isinstance(session, dict) and session.get("status") == "active":
            self.observe_session_start(UUID(str(session["id"])),
                                       datetime.fromisoformat(str(session["created_at"])))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_router(metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                                 "description": "Prometheus text exposition format."}})
    def prometheus_metrics() -> Response:
        """The service's metrics in Prometheus' text format."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
