"""Cleanup tasks: end dead sessions, remove orphaned containers, prune snapshots and events.

Each part is safe to run at any moment alongside live traffic, and twice at once: every
change re-checks its condition in the statement that makes it, so a session that sent a
heartbeat, or a snapshot that was reused, a moment ago is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from tasks.resources import database, object_store
from tasks.retries import RETRY_TRANSIENT
from velocity.runtimes import Runtime, UnknownRuntime, get_runtime
from velocity.runtimes.base import LABEL_MANAGED, LABEL_SESSION_ID
from velocity.settings import get_settings

# Every task acts on the world (a flag, a row, a container): none is cached.
STEP: dict[str, Any] = {"cache_policy": NO_CACHE, **RETRY_TRANSIENT}
HEARTBEAT_TIMEOUT_SECONDS = 120
CREATING_TIMEOUT_SECONDS = 600
SNAPSHOT_RETENTION_SECONDS = 24 * 3600
EVENT_RETENTION_SECONDS = 7 * 24 * 3600
# Upper bounds on one run's work, so a backlog drains over several runs in short transactions.
SNAPSHOTS_PER_RUN = 500
EVENTS_PER_PROJECT_PER_RUN = 100_000
DEFAULT_RUNTIMES = ("process",)


class EndedSessions(BaseModel):
    expired: int = 0
    silent: int = 0
    stuck_creating: int = 0
    containers_stopped: int = 0
    stop_failures: list[str] = []

    @property
    def ended(self) -> int:
        return self.expired + self.silent + self.stuck_creating


class RemovedContainers(BaseModel):
    checked: int = 0
    removed: int = 0
    runtimes: list[str] = []
    failures: list[str] = []


class PrunedSnapshots(BaseModel):
    deleted: int = 0
    bytes: int = 0


class PrunedEvents(BaseModel):
    events: int = 0
    projects: int = 0


# -- (a) sessions ----------------------------------------------------------------------------

END_DEAD_SESSIONS = """
UPDATE preview_sessions s
   SET status = 'ended', ended_at = now(), updated_at = now(), token_jti = NULL
  FROM (SELECT id,
               CASE WHEN expires_at < now() THEN 'expired'
                    WHEN status = 'creating' THEN 'stuck_creating'
                    ELSE 'silent' END AS reason
          FROM preview_sessions
         WHERE status IN ('creating', 'active')
           AND (expires_at < now()
                OR (status = 'active'
                    AND coalesce(heartbeat_at, created_at) < now() - %(heartbeat)s)
                OR (status = 'creating' AND created_at < now() - %(creating)s))
         FOR UPDATE SKIP LOCKED) dead
 WHERE s.id = dead.id
RETURNING s.id, s.project_id, s.runtime, s.container_id, dead.reason
"""


@task(name="end-dead-sessions", **STEP)
def end_dead_sessions(heartbeat_timeout_seconds: float = HEARTBEAT_TIMEOUT_SECONDS,
                      creating_timeout_seconds: float = CREATING_TIMEOUT_SECONDS) -> EndedSessions:
    """End sessions past `expires_at`, active ones silent past the heartbeat deadline, and
    ones stuck in `creating`; then stop and remove their containers.

    The row is ended first: that revokes the container's token at once (the revocation
    trigger), and a container that then fails to stop is an orphan the container sweep
    removes on a later run.
    """
    with database().transaction() as conn:
        rows = conn.execute(END_DEAD_SESSIONS, {
            "heartbeat": timedelta(seconds=heartbeat_timeout_seconds),
            "creating": timedelta(seconds=creating_timeout_seconds)}).fetchall()
    result = EndedSessions()
    logger = get_run_logger()
    runtimes: dict[str, Runtime | None] = {}
    for session_id, project_id, runtime_name, container_id, reason in rows:
        setattr(result, reason, getattr(result, reason) + 1)
        logger.info("ended %s session session_id=%s project_id=%s", reason, session_id,
                    project_id, extra={"session_id": str(session_id),
                                       "project_id": str(project_id)})
        if container_id is None:
            continue
        runtime = _runtime(runtime_name, runtimes)
        if runtime is None:
            result.stop_failures.append(f"{container_id}: unknown runtime {runtime_name!r}")
            continue
        try:
            runtime.stop(container_id, remove=True)
        except Exception as error:  # the orphan sweep retries it; the other sessions go on
            logger.warning("could not stop container %s of session_id=%s: %s", container_id,
                           session_id, error)
            result.stop_failures.append(f"{container_id}: {error}")
        else:
            result.containers_stopped += 1
    return result


def _runtime(name: str, cache: dict[str, Runtime | None]) -> Runtime | None:
    if name not in cache:
        try:
            cache[name] = get_runtime(name, get_settings())
        except UnknownRuntime:
            cache[name] = None
    return cache[name]


# -- (b) containers --------------------------------------------------------------------------


@task(name="remove-orphaned-containers", **STEP)
def remove_orphaned_containers(runtimes: list[str] | None = None) -> RemovedContainers:
    """Stop and remove every container labelled as ours whose session is not live.

    Checks `runtimes`, else "process" and every runtime a session row names. A session row
    is written (`creating`) before its container starts, so a new container is never taken
    for an orphan.
    """
    logger = get_run_logger()
    names = sorted(set(runtimes) if runtimes is not None else _runtimes_in_use())
    result = RemovedContainers(runtimes=names)
    cache: dict[str, Runtime | None] = {}
    for name in names:
        runtime = _runtime(name, cache)
        if runtime is None:
            result.failures.append(f"unknown runtime {name!r}")
            continue
        containers = runtime.list({LABEL_MANAGED: "true"})
        result.checked += len(containers)
        live = _live_session_labels(info.labels.get(LABEL_SESSION_ID, "")
                                    for info in containers)
        for info in containers:
            if info.labels.get(LABEL_SESSION_ID, "") in live:
                continue
            try:
                runtime.remove(info.container_id)
            except Exception as error:  # one stuck container must not shield the others
                logger.warning("could not remove orphaned container %s (%s): %s",
                               info.container_id, name, error)
                result.failures.append(f"{info.container_id}: {error}")
                continue
            result.removed += 1
            logger.info("removed orphaned %s container %s of session_id=%s", name,
                        info.container_id, info.labels.get(LABEL_SESSION_ID))
    return result


def _runtimes_in_use() -> set[str]:
    with database().transaction() as conn:
        rows = conn.execute("SELECT DISTINCT runtime FROM preview_sessions").fetchall()
    return set(DEFAULT_RUNTIMES) | {row[0] for row in rows}


def _live_session_labels(labels: Iterable[str]) -> set[str]:
    """Those of `labels` that name a live session, by row id or by its session_id text."""
    wanted = sorted({label for label in labels if label})
    if not wanted:
        return set()
    with database().transaction() as conn:
        rows = conn.execute(
            "SELECT label FROM unnest(%s::text[]) AS label WHERE EXISTS ("
            " SELECT 1 FROM preview_sessions s WHERE s.status IN ('creating', 'active')"
            " AND (s.id::text = label OR s.session_id = label))", (wanted,)).fetchall()
    return {row[0] for row in rows}


# -- (c) snapshots ---------------------------------------------------------------------------

PRUNABLE_SNAPSHOTS = """
SELECT p.id, p.storage_key, p.manifest_key, p.size_bytes
  FROM project_snapshots p
 WHERE p.last_used_at < now() - %(retention)s
   AND NOT EXISTS (SELECT 1 FROM preview_sessions s
                    WHERE s.snapshot_id = p.id AND s.status IN ('creating', 'active'))
   AND p.id <> (SELECT latest.id FROM project_snapshots latest
                 WHERE latest.project_id = p.project_id
                 ORDER BY latest.created_at DESC, latest.id DESC LIMIT 1)
 ORDER BY p.last_used_at
 LIMIT %(limit)s
   FOR UPDATE OF p SKIP LOCKED
"""


@task(name="prune-snapshots", **STEP)
def prune_snapshots(retention_seconds: float = SNAPSHOT_RETENTION_SECONDS) -> PrunedSnapshots:
    """Delete snapshots unused for `retention_seconds`, unless a live session uses one or it
    is its project's latest: the zip and manifest from storage, then the row.

    The rows stay locked while their objects go (a reuse waits), and are deleted in the same
    transaction; if storage fails, the rows stay and the next run deletes what is left
    (deleting a missing object is a no-op).
    """
    result = PrunedSnapshots()
    store = object_store()
    with database().transaction() as conn:
        rows = conn.execute(PRUNABLE_SNAPSHOTS, {
            "retention": timedelta(seconds=retention_seconds),
            "limit": SNAPSHOTS_PER_RUN}).fetchall()
        for _snapshot_id, storage_key, manifest_key, size in rows:
            store.delete(storage_key)
            store.delete(manifest_key)
            result.bytes += size
        if rows:
            conn.execute("DELETE FROM project_snapshots WHERE id = ANY(%s)",
                         ([row[0] for row in rows],))
        result.deleted = len(rows)
    if rows:
        get_run_logger().info("deleted %d snapshots (%d bytes)", result.deleted, result.bytes)
    return result


# -- (d) events ------------------------------------------------------------------------------

# How far a project's log may be pruned: the newest seq no reader can still ask for. A live
# session resumes after its applied_seq (still hydrating, after its snapshot's watermark;
# knowing neither, it pins the log at 0); a new session replays after the latest snapshot's
# watermark; only a prefix made wholly of rows older than the retention goes; and never past
# the last event. A consumer at seq N asks for seq > N, so N itself may go (events_since
# refuses only since_seq < pruned_through_seq). least() skips the NULLs of absent terms.
PRUNE_LIMIT = """
SELECT least(
  (SELECT min(coalesce(s.applied_seq, snap.watermark, 0))
     FROM preview_sessions s LEFT JOIN project_snapshots snap ON snap.id = s.snapshot_id
    WHERE s.project_id = p.id AND s.status IN ('creating', 'active')),
  (SELECT latest.watermark FROM project_snapshots latest WHERE latest.project_id = p.id
    ORDER BY latest.created_at DESC, latest.id DESC LIMIT 1),
  (SELECT min(e.seq) - 1 FROM file_events e
    WHERE e.project_id = p.id AND e.created_at >= now() - %(retention)s),
  p.pruned_through_seq + %(batch)s,
  p.last_event_seq)
  FROM projects p WHERE p.id = %(project)s
"""


@task(name="prune-events", **STEP)
def prune_events(retention_seconds: float = EVENT_RETENTION_SECONDS) -> PrunedEvents:
    """Delete event-log rows older than `retention_seconds` that no reader still needs, and
    advance each project's pruned_through_seq so events_since reports the gap (22V07).

    One short transaction per project, holding the project row lock that writers take, so
    no event is appended and no snapshot recorded while its limit is computed and applied.
    """
    retention = timedelta(seconds=retention_seconds)
    with database().transaction() as conn:
        projects = [row[0] for row in conn.execute(
            "SELECT DISTINCT e.project_id FROM file_events e"
            " WHERE e.created_at < now() - %s", (retention,)).fetchall()]
    result = PrunedEvents()
    for project_id in projects:
        pruned = _prune_project_events(project_id, retention)
        if pruned:
            result.events += pruned
            result.projects += 1
    if result.events:
        get_run_logger().info("pruned %d events of %d projects", result.events,
                              result.projects)
    return result


def _prune_project_events(project_id: UUID, retention: timedelta) -> int:
    with database().transaction() as conn:
        # Lock first, then read: the limit's statement sees everything committed before.
        locked = conn.execute("SELECT pruned_through_seq FROM projects WHERE id = %s"
                              " FOR NO KEY UPDATE", (project_id,)).fetchone()
        if locked is None:
            return 0
        (limit,) = conn.execute(PRUNE_LIMIT, {
            "project": project_id, "retention": retention,
            "batch": EVENTS_PER_PROJECT_PER_RUN}).fetchone()  # type: ignore[misc]
        if limit <= locked[0]:
            return 0
        deleted = conn.execute(
            "DELETE FROM file_events WHERE project_id = %s AND seq <= %s",
            (project_id, limit)).rowcount
        conn.execute("UPDATE projects SET pruned_through_seq = %s WHERE id = %s",
                     (limit, project_id))
    get_run_logger().info("pruned events through seq %d of project_id=%s", limit, project_id,
                          extra={"project_id": str(project_id)})
    return deleted
