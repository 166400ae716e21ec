"""The session flows: provision a preview session end to end, and stop one.

Async, because a flow run's start latency is the user's wait: an async run ends without the
~1 s a sync run pays for its heartbeat thread, and each async task costs ~15 ms of engine
overhead where a sync task in an async flow costs ~100 ms.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from tasks.sessions import (
    DEFAULT_READY_SECONDS,
    claim_session,
    ensure_project_files,
    load_session,
    mark_active,
    mark_ended,
    mark_failed,
    mint_token,
    sign_session_snapshot,
    start_container,
    stop_container,
    wait_ready,
)
from tasks.snapshots import build_project_snapshot
from velocity.runtimes import ContainerInfo
from velocity.sessions import AgentFailed, SessionRow
from velocity.snapshots import SnapshotResult

START_ATTEMPTS = 2  # the second only after a snapshot the agent could not use was rebuilt


def _emit(event: str, session: SessionRow, **payload: Any) -> None:
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"velocity.session.{session.id}",
                  "prefect.resource.name": f"session {session.id}"},
        related=[{"prefect.resource.id": f"velocity.project.{session.project_id}",
                  "prefect.resource.role": "project"}],
        payload={"session_id": str(session.id), "project_id": str(session.project_id),
                 "status": session.status, **payload},
    )


class _Steps:
    """Which step runs now (for the error message) and how long each one took."""

    def __init__(self) -> None:
        self.current = "claim-session"
        self.timings: list[dict[str, Any]] = []
        self._since = time.perf_counter()

    def next(self, name: str) -> None:
        now = time.perf_counter()
        self.timings.append({"step": self.current, "seconds": round(now - self._since, 3)})
        self.current, self._since = name, now


@flow(name="provision-session", log_prints=False)
async def provision_session(project_id: UUID, user_id: UUID, runtime: str = "process",
                            session_id: UUID | None = None,
                            ready_timeout: float = DEFAULT_READY_SECONDS) -> dict[str, Any]:
    """Make a preview session active: files → snapshot → signed URL → token → container →
    the agent's ready report.

    Uses the `creating` session `session_id` (the API's) or opens one; a session already
    active is returned as it is. On any failure the session becomes `error` with the failed
    step in its message, its containers are removed and its token revoked, and the flow run
    fails with the original error. An agent that cannot use its snapshot gets one rebuilt
    (forced) and is started once more.
    """
    steps = _Steps()
    run_id = flow_run.get_id()
    session, provision = await claim_session(project_id, user_id, runtime, session_id,
                                       UUID(run_id) if run_id else None)
    if not provision:
        return session.model_dump(mode="json")
    runtime = session.runtime  # the row's: the API chose it when it opened the session
    container: ContainerInfo | None = None
    try:
        steps.next("ensure-project-files")
        await ensure_project_files(project_id, session.id)
        steps.next("build-snapshot")
        snapshot: SnapshotResult = await build_project_snapshot(project_id)
        steps.next("mint-container-token")
        token = await mint_token(session.id, project_id)
        for attempt in range(1, START_ATTEMPTS + 1):
            steps.next("sign-session-snapshot")
            url = await sign_session_snapshot(session.id, snapshot)
            steps.next("start-container")
            container = await start_container(session.id, project_id, runtime, url, token)
            steps.next("wait-ready")
            try:
                await wait_ready(session.id, runtime, container.container_id, ready_timeout)
                break
            except AgentFailed as failure:
                if not failure.snapshot_failed or attempt == START_ATTEMPTS:
                    raise
                get_run_logger().warning(
                    "session_id=%s: the agent could not use snapshot %s (%s); rebuilding it",
                    session.id, snapshot.snapshot_id, failure.message,
                    extra={"session_id": str(session.id), "project_id": str(project_id)})
                steps.next("stop-container")
                await stop_container(runtime, session.id, container.container_id)
                container = None
                steps.next("rebuild-snapshot")
                snapshot = await build_project_snapshot(project_id, force=True)
        assert container is not None
        steps.next("mark-session-active")
        active = await mark_active(session.id, container.container_id, container.url)
        steps.next("done")
    except BaseException as error:
        failed = await _compensate(session, runtime, container, f"{steps.current} failed: {error}")
        _emit("velocity.session.failed", failed, step=steps.current,
              error=type(error).__name__, message=failed.error_message)
        raise
    _emit("velocity.session.active", active, container_id=active.container_id,
          container_url=active.container_url, snapshot_id=str(active.snapshot_id))
    try:
        await acreate_table_artifact(
            key=f"session-{active.id}", table=steps.timings,
            description=f"Provisioning of session {active.id} (project {project_id})")
    except Exception as error:  # the session is active: a missing summary must not fail it
        get_run_logger().warning("session_id=%s: no timing artifact: %s", active.id, error)
    return active.model_dump(mode="json")


async def _compensate(session: SessionRow, runtime: str, container: ContainerInfo | None,
                message: str) -> SessionRow:
    """Remove what provisioning started and mark the session failed, each step attempted
    even if the other fails; the session row as it ends up."""
    logger = get_run_logger()
    try:
        await stop_container(runtime, session.id,
                             container.container_id if container else None)
    except Exception as error:  # cleanup's orphan sweep is the backstop
        logger.error("session_id=%s: could not remove its container: %s", session.id, error,
                     extra={"session_id": str(session.id)})
    try:
        return await mark_failed(session.id, message)
    except Exception as error:
        logger.error("session_id=%s: could not mark it failed: %s", session.id, error,
                     extra={"session_id": str(session.id)})
        return session.model_copy(update={"status": "error", "error_message": message})


@flow(name="stop-session", log_prints=False)
async def stop_session(session_id: UUID) -> dict[str, Any]:
    """Stop a session: remove its container, end it (revoking its token). Idempotent."""
    session = await load_session(session_id)
    await stop_container(session.runtime, session.id, session.container_id)
    ended = await mark_ended(session.id)
    if session.is_live:
        _emit("velocity.session.ended", ended, container_id=session.container_id)
    return ended.model_dump(mode="json")
