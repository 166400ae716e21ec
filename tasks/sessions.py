"""Session tasks: each one step of provisioning or stopping a preview session.

The tasks are async and run their blocking work in a thread: in an async flow a sync task
costs ~100 ms of engine overhead, an async one ~15 ms, and a session's start time is the
user's wait. A timeout then cancels the await (the thread finishes on its own; every blocking
call here is bounded). None is cached: each acts on the world (a row, a container, a token)
and must run every time. Transient failures retry with backoff and jitter; validation
errors, permission errors and an agent that failed never do.
"""

from __future__ import annotations

import time
from asyncio import to_thread
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.resources import database, object_store
from tasks.retries import RETRY_TRANSIENT
from velocity import generation, sessions
from velocity.errors import InvalidInput
from velocity.files import BulkResult
from velocity.runtimes import (
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    Runtime,
    UnknownRuntime,
    get_runtime,
)
from velocity.runtimes.base import LABEL_SESSION_ID
from velocity.sessions import SessionNotLive, SessionRow
from velocity.settings import get_settings
from velocity.snapshots import SnapshotResult
from velocity.snapshots import snapshot_url as signed_snapshot_url
from velocity.tokens import mint_container_token

STEP: dict[str, Any] = {"cache_policy": NO_CACHE, **RETRY_TRANSIENT}
DEFAULT_READY_SECONDS = 30.0
MIN_TOKEN_SECONDS = 60
STOP_TIMEOUT_SECONDS = 10.0


def _facts(session_id: UUID | str | None, project_id: UUID | str | None = None,
           event_type: str | None = None) -> dict[str, Any]:
    """The `extra` of a log record: what a log search filters sessions by."""
    facts: dict[str, Any] = {}
    if session_id is not None:
        facts["session_id"] = str(session_id)
    if project_id is not None:
        facts["project_id"] = str(project_id)
    if event_type is not None:
        facts["event_type"] = event_type
    return {"extra": facts}


@task(name="claim-session", timeout_seconds=30, **STEP)
async def claim_session(project_id: UUID, user_id: UUID, runtime: str,
                        session_id: UUID | None = None,
                        flow_run_id: UUID | None = None) -> tuple[SessionRow, bool]:
    """The session this flow run provisions, and whether it should.

    Args: the project and user; the runtime name; the `creating` row the API made, if any
    (else the user's live session is returned, or a new one opened); this flow run's id.
    Returns the row and True when this run is to provision it — False for a session already
    active, or being provisioned by another run.
    """
    row, provision = await to_thread(_claim, UUID(str(project_id)), UUID(str(user_id)),
                                     runtime, session_id, flow_run_id)
    get_run_logger().info(
        "session_id=%s of project_id=%s is %s; %s", row.id, project_id, row.status,
        "provisioning it" if provision else "nothing to provision",
        **_facts(row.id, project_id, "session.claimed"))
    return row, provision


def _claim(project_id: UUID, user_id: UUID, runtime: str, session_id: UUID | None,
           flow_run_id: UUID | None) -> tuple[SessionRow, bool]:
    db = database()
    if session_id is None:
        row, created = sessions.open_session(db, project_id, user_id, runtime)
    else:
        row, created = sessions.get_session(db, session_id), False
        if row.project_id != project_id or row.user_id != user_id:
            raise InvalidInput(f"session {session_id} is not user {user_id}'s session on "
                               f"project {project_id}", field="session_id")
        if not row.is_live:
            raise SessionNotLive(f"session {session_id} is {row.status}: it cannot be "
                                 "provisioned", session_id=str(session_id), status=row.status)
    owner = row.flow_run_id
    provision = row.status == "creating" and (created or owner is None or owner == flow_run_id)
    if provision and flow_run_id is not None and owner != flow_run_id:
        row = sessions.set_flow_run(db, row.id, flow_run_id)
    return row, provision


@task(name="ensure-project-files", timeout_seconds=120, **STEP)
async def ensure_project_files(project_id: UUID,
                               session_id: UUID | None = None) -> BulkResult | None:
    """Give an empty project its template's files (projects.template, else static).

    Args: the project; the session it is for (for the logs).
    Returns the bulk write's result (one bulk:apply event), or None if it had files.
    """
    result = await to_thread(generation.ensure_project_files, database(), project_id)
    logger = get_run_logger()
    facts = _facts(session_id, project_id, "bulk:apply" if result else None)
    if result is None:
        logger.info("project_id=%s has files; nothing generated", project_id, **facts)
    else:
        logger.info("project_id=%s was empty: generated %d files (bulk:apply seq %s)",
                    project_id, result.changed, result.seq, **facts)
    return result


@task(name="sign-session-snapshot", timeout_seconds=30, **STEP)
async def sign_session_snapshot(session_id: UUID, snapshot: SnapshotResult) -> str:
    """Record the snapshot the session starts from and sign its URL.

    Args: the session; the snapshot built for it.
    Returns the signed, expiring SNAPSHOT_URL (manifest facts in its fragment).
    """
    await to_thread(sessions.set_snapshot, database(), session_id, snapshot.snapshot_id)
    ttl = get_settings().snapshot_url_ttl_seconds
    url = await to_thread(signed_snapshot_url, object_store(), snapshot, ttl)
    get_run_logger().info("session_id=%s starts from snapshot %s (watermark %d)", session_id,
                          snapshot.snapshot_id, snapshot.watermark,
                          **_facts(session_id, snapshot.project_id))
    return url


@task(name="mint-container-token", timeout_seconds=30, **STEP)
async def mint_token(session_id: UUID, project_id: UUID) -> str:
    """Mint the container's token for the project's channel, valid as long as the session.

    Args: the session and its project.
    Returns the token; its jti and expiry are recorded on the session (for revocation).
    """
    token, ttl = await to_thread(_mint, session_id, project_id)
    get_run_logger().info("session_id=%s has a container token for %ds", session_id, ttl,
                          **_facts(session_id, project_id))
    return token


def _mint(session_id: UUID, project_id: UUID) -> tuple[str, int]:
    db = database()
    row = sessions.get_session(db, session_id)
    remaining = (row.expires_at.timestamp() - time.time()) if row.expires_at else 3600
    ttl = max(MIN_TOKEN_SECONDS, int(remaining))
    token, claims = mint_container_token(session_id, project_id, ttl, get_settings())
    sessions.set_token(db, session_id, claims.jti, datetime.fromtimestamp(claims.exp, UTC))
    return token, ttl


@task(name="start-container", timeout_seconds=120, **STEP)
async def start_container(session_id: UUID, project_id: UUID, runtime: str, snapshot_url: str,
                          token: str) -> ContainerInfo:
    """Start the session's agent through `runtime` with exactly the five variables.

    Args: the session and project; the runtime name; the signed snapshot URL; the token.
    Returns where the container runs; its id and URL are recorded on the session. If
    recording fails, the container is removed again, so none is left unaccounted for.
    """
    info = await to_thread(_start, session_id, project_id, runtime, snapshot_url, token)
    get_run_logger().info("session_id=%s started container %s on %s at %s", session_id,
                          info.container_id, runtime, info.url,
                          **_facts(session_id, project_id))
    return info


def _start(session_id: UUID, project_id: UUID, runtime: str, snapshot_url: str,
           token: str) -> ContainerInfo:
    settings = get_settings()
    chosen = get_runtime(runtime, settings)
    db = database()
    sessions.clear_agent_status(db, session_id)  # what an earlier agent said is not news
    spec = ContainerSpec(session_id=str(session_id), project_id=str(project_id), env={
        "PROJECT_ID": str(project_id),
        "SESSION_ID": str(session_id),
        "SNAPSHOT_URL": snapshot_url,
        "REALTIME_URL": settings.realtime_url(),
        "REALTIME_TOKEN": token,
    })
    info = chosen.start(spec)
    try:
        sessions.set_container(db, session_id, info.container_id, info.url)
    except BaseException:
        chosen.remove(info.container_id)
        raise
    return info


@task(name="wait-ready", timeout_seconds=300, **STEP)
async def wait_ready(session_id: UUID, runtime: str, container_id: str,
                     deadline_seconds: float = DEFAULT_READY_SECONDS) -> dict[str, Any]:
    """Wait for the agent's ready report, at most `deadline_seconds` (under 300).

    Args: the session; its runtime and container (checked for an early exit).
    Returns the agent's status. Raises AgentFailed (reported error, or the agent exited),
    AgentTimeout, or SessionNotLive if the session was ended meanwhile.
    """
    chosen = get_runtime(runtime, get_settings())
    started = time.monotonic()
    status = await to_thread(sessions.wait_for_agent, database(), session_id, deadline_seconds,
                             exited=lambda: _how_it_ended(chosen, container_id))
    get_run_logger().info("session_id=%s: agent ready after %.2fs (applied seq %s)", session_id,
                          time.monotonic() - started, status.get("applied_seq"),
                          **_facts(session_id, event_type="session.ready"))
    return status


def _how_it_ended(runtime: Runtime, container_id: str) -> str | None:
    """None while the container runs; else how it ended, with its last log lines."""
    try:
        info = runtime.status(container_id)
    except ContainerNotFound:
        return f"container {container_id} is gone"
    if info.state != "exited":
        return None
    tail = runtime.logs(container_id, tail=3).strip().replace("\n", " | ")
    return f"exited with code {info.exit_code}" + (f" ({tail})" if tail else "")


@task(name="mark-session-active", timeout_seconds=30, **STEP)
async def mark_active(session_id: UUID, container_id: str, container_url: str) -> SessionRow:
    """Make the session `active` with its container. Returns the row."""
    row = await to_thread(sessions.mark_active, database(), session_id, container_id,
                          container_url)
    get_run_logger().info("session_id=%s is active at %s", session_id, container_url,
                          **_facts(session_id, row.project_id, "session.active"))
    return row


@task(name="stop-container", timeout_seconds=60, **STEP)
async def stop_container(runtime: str, session_id: UUID,
                         container_id: str | None = None) -> list[str]:
    """Stop and remove the container, and any other container labelled with the session.

    Args: the runtime name; the session; the container recorded for it, if any.
    Returns the ids removed. Idempotent: a container already gone is fine; an unknown
    runtime can have started nothing.
    """
    logger = get_run_logger()
    try:
        chosen = get_runtime(runtime, get_settings())
    except UnknownRuntime:
        logger.info("session_id=%s: runtime %r is unknown, so nothing runs", session_id,
                    runtime, **_facts(session_id))
        return []
    removed = await to_thread(_remove_containers, chosen, session_id, container_id)
    if removed:
        logger.info("session_id=%s: removed %s", session_id, ", ".join(removed),
                    **_facts(session_id))
    return removed


def _remove_containers(runtime: Runtime, session_id: UUID,
                       container_id: str | None) -> list[str]:
    found = {info.container_id for info in runtime.list({LABEL_SESSION_ID: str(session_id)})}
    if container_id is not None:
        found.add(container_id)
    for each in sorted(found):
        runtime.stop(each, timeout=STOP_TIMEOUT_SECONDS, remove=True)
    return sorted(found)


@task(name="mark-session-failed", timeout_seconds=30, **STEP)
async def mark_failed(session_id: UUID, message: str) -> SessionRow:
    """`error` with `message`; its token is revoked. Returns the row."""
    row = await to_thread(sessions.mark_error, database(), session_id, message)
    get_run_logger().warning("session_id=%s failed: %s", session_id, message,
                             **_facts(session_id, row.project_id, "session.failed"))
    return row


@task(name="mark-session-ended", timeout_seconds=30, **STEP)
async def mark_ended(session_id: UUID) -> SessionRow:
    """`ended` now, its token revoked; a session already over is left as it is."""
    row = await to_thread(sessions.mark_ended, database(), session_id)
    get_run_logger().info("session_id=%s is %s", session_id, row.status,
                          **_facts(session_id, row.project_id, "session.ended"))
    return row


@task(name="load-session", timeout_seconds=30, **STEP)
async def load_session(session_id: UUID) -> SessionRow:
    """The session's row (NotFound if there is none)."""
    return await to_thread(sessions.get_session, database(), session_id)
