"""Preview sessions: the `preview_sessions` row through its life, and waiting for its agent.

A session is `creating` while it is provisioned, `active` once its agent reported ready, and
ends as `ended` (stopped) or `error` (provisioning failed). Leaving the live states, or
changing `token_jti`, revokes the container's token in every gateway (sql/0013), so ending a
session here is also what cuts its agent off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

from velocity.db import Database
from velocity.errors import InvalidInput, NotFound, PermissionDenied, VelocityError

SessionStatus = Literal["creating", "active", "ended", "error"]
LIVE_STATUSES: tuple[str, ...] = ("creating", "active")
AGENT_POLL_SECONDS = 0.05
EXIT_CHECK_SECONDS = 0.5
# The agent prefixes every failure to hydrate from a snapshot with this (agent/main.py):
# "hydration: snapshot download refused: HTTP 404 …", "hydration failed: …".
SNAPSHOT_ERROR_PREFIX = "hydration"

_COLUMNS = ("id, user_id, project_id, runtime, status, container_id, container_url, snapshot_id,"
            " token_jti, flow_run_id, error_message, applied_seq, lag_ms, agent_status,"
            " heartbeat_at, expires_at, created_at, ended_at")


class SessionRow(BaseModel):
    """A row of preview_sessions, as the API and flows see it."""

    id: UUID
    user_id: UUID
    project_id: UUID
    runtime: str
    status: SessionStatus
    container_id: str | None
    container_url: str | None
    snapshot_id: UUID | None
    token_jti: str | None
    flow_run_id: UUID | None
    error_message: str | None
    applied_seq: int | None
    lag_ms: int | None
    agent_status: dict[str, Any] | None
    heartbeat_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    ended_at: datetime | None

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


class SessionNotLive(VelocityError):
    """The session was ended (or failed) meanwhile: it can no longer become active."""

    code = "session_not_live"
    http_status = 409


class AgentFailed(VelocityError):
    """The agent reported an error, or exited, before it was ready."""

    code = "agent_failed"
    http_status = 502

    @property
    def snapshot_failed(self) -> bool:
        """Whether the agent could not hydrate from its snapshot (a rebuild may help)."""
        return bool(self.facts.get("snapshot_failed"))


class AgentTimeout(VelocityError):
    """The agent did not report ready before the deadline."""

    code = "agent_timeout"
    http_status = 504


def open_session(db: Database, project_id: UUID | str, user_id: UUID | str, runtime: str,
                 ttl_seconds: int = 3600) -> tuple[SessionRow, bool]:
    """A new `creating` session, or the user's live one on this project (created False).

    Race-safe: the partial unique index preview_sessions_one_live_per_user_project decides,
    so concurrent callers all get the same row. NotFound for an unknown project,
    PermissionDenied when the user is not one of its members.
    """
    if ttl_seconds <= 0:
        raise InvalidInput(f"ttl_seconds must be positive, got {ttl_seconds}",
                           field="ttl_seconds")
    for _ in range(5):  # the live row may end between our INSERT and SELECT: try again
        with db.transaction() as conn:
            _check_member(conn, project_id, user_id)
            cursor = conn.cursor(row_factory=dict_row)
            row = cursor.execute(
                "INSERT INTO preview_sessions (user_id, project_id, runtime, status, expires_at)"
                " VALUES (%s, %s, %s, 'creating', now() + make_interval(secs => %s))"
                " ON CONFLICT (user_id, project_id) WHERE status IN ('creating', 'active')"
                f" DO NOTHING RETURNING {_COLUMNS}",
                (str(user_id), str(project_id), runtime, ttl_seconds)).fetchone()
            if row is not None:
                return SessionRow.model_validate(row), True
            row = cursor.execute(
                f"SELECT {_COLUMNS} FROM preview_sessions WHERE user_id = %s AND project_id = %s"
                " AND status IN ('creating', 'active')", (str(user_id), str(project_id))
            ).fetchone()
            if row is not None:
                return SessionRow.model_validate(row), False
    raise SessionNotLive(f"could not open a session on project {project_id}: its live session"
                         " kept changing", project_id=str(project_id))


def _check_member(conn: psycopg.Connection, project_id: UUID | str,
                  user_id: UUID | str) -> None:
    try:
        found = conn.execute(
            "SELECT m.role FROM projects p LEFT JOIN project_members m"
            " ON m.project_id = p.id AND m.user_id = %s WHERE p.id = %s",
            (str(user_id), str(project_id))).fetchone()
    except psycopg.errors.InvalidTextRepresentation:
        raise NotFound(f"project {project_id} not found", project_id=str(project_id)) from None
    if found is None:
        raise NotFound(f"project {project_id} not found", project_id=str(project_id))
    if found[0] is None:
        raise PermissionDenied(f"user {user_id} is not a member of project {project_id}",
                               project_id=str(project_id), user_id=str(user_id))


def get_session(db: Database, session_id: UUID | str) -> SessionRow:
    with db.transaction() as conn:
        row = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS} FROM preview_sessions WHERE id = %s", (str(session_id),)
        ).fetchone()
    if row is None:
        raise NotFound(f"session {session_id} not found", session_id=str(session_id))
    return SessionRow.model_validate(row)


def _update(db: Database, session_id: UUID | str, assignments: str, args: tuple[Any, ...],
            *, live_only: bool) -> SessionRow | None:
    """UPDATE one session (only a live one if `live_only`); the row, or None if unchanged."""
    condition = " AND status IN ('creating', 'active')" if live_only else ""
    with db.transaction() as conn:
        row = conn.cursor(row_factory=dict_row).execute(
            f"UPDATE preview_sessions SET {assignments}, updated_at = now()"
            f" WHERE id = %s{condition} RETURNING {_COLUMNS}", (*args, str(session_id))
        ).fetchone()
    return SessionRow.model_validate(row) if row is not None else None


def _update_live(db: Database, session_id: UUID | str, assignments: str,
                 args: tuple[Any, ...], doing: str) -> SessionRow:
    row = _update(db, session_id, assignments, args, live_only=True)
    if row is None:
        current = get_session(db, session_id)  # NotFound if there is no such session
        raise SessionNotLive(f"cannot {doing}: session {session_id} is {current.status}",
                             session_id=str(session_id), status=current.status)
    return row


def set_flow_run(db: Database, session_id: UUID | str, flow_run_id: UUID | str) -> SessionRow:
    return _update_live(db, session_id, "flow_run_id = %s", (str(flow_run_id),),
                        "record its flow run")


def set_snapshot(db: Database, session_id: UUID | str, snapshot_id: UUID | str) -> SessionRow:
    return _update_live(db, session_id, "snapshot_id = %s", (str(snapshot_id),),
                        "record its snapshot")


def set_token(db: Database, session_id: UUID | str, jti: str,
              expires_at: datetime) -> SessionRow:
    """Record the container token; a new jti revokes any earlier one."""
    return _update_live(db, session_id, "token_jti = %s, token_expires_at = %s",
                        (jti, expires_at), "record its token")


def clear_agent_status(db: Database, session_id: UUID | str) -> SessionRow:
    """Forget what an earlier agent reported, before another one starts."""
    return _update_live(db, session_id,
                        "agent_status = NULL, heartbeat_at = NULL, applied_seq = NULL,"
                        " lag_ms = NULL", (), "reset its agent status")


def set_container(db: Database, session_id: UUID | str, container_id: str,
                  container_url: str) -> SessionRow:
    return _update_live(db, session_id, "container_id = %s, container_url = %s",
                        (container_id, container_url), "record its container")


def mark_active(db: Database, session_id: UUID | str, container_id: str,
                container_url: str) -> SessionRow:
    """`active` with its container; SessionNotLive if it was ended meanwhile."""
    return _update_live(db, session_id,
                        "status = 'active', container_id = %s, container_url = %s,"
                        " error_message = NULL", (container_id, container_url),
                        "make it active")


def mark_error(db: Database, session_id: UUID | str, message: str) -> SessionRow:
    """`error` with `message`, its token revoked. A session already over keeps its state."""
    row = _update(db, session_id,
                  "status = 'error', error_message = %s, token_jti = NULL", (message,),
                  live_only=True)
    return row if row is not None else get_session(db, session_id)


def mark_ended(db: Database, session_id: UUID | str) -> SessionRow:
    """`ended` now, its token revoked. Idempotent: a session already over keeps its state."""
    row = _update(db, session_id, "status = 'ended', ended_at = now(), token_jti = NULL", (),
                  live_only=True)
    return row if row is not None else get_session(db, session_id)


def wait_for_agent(db: Database, session_id: UUID | str, timeout: float, *,
                   exited: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """The agent's status once it reports ready, polled every 50 ms until `timeout` seconds.

    Raises AgentFailed when the agent reports an error (`snapshot_failed` when it could not
    hydrate from its snapshot) or when `exited` — asked every half second — describes how the
    agent ended; AgentTimeout after the deadline; SessionNotLive if the session ends meanwhile.
    """
    deadline = time.monotonic() + timeout
    next_exit_check = time.monotonic() + EXIT_CHECK_SECONDS
    last: dict[str, Any] | None = None
    while True:
        session = get_session(db, session_id)
        if not session.is_live:
            raise SessionNotLive(f"session {session_id} became {session.status} while its agent"
                                 " was starting", session_id=str(session_id),
                                 status=session.status)
        last = session.agent_status
        if last and last.get("ready"):
            return last
        if last and last.get("error"):
            raise _agent_failed(session_id, str(last["error"]))
        now = time.monotonic()
        if exited is not None and now >= next_exit_check:
            next_exit_check = now + EXIT_CHECK_SECONDS
            ending = exited()
            if ending is not None:
                final = get_session(db, session_id).agent_status or {}
                error = final.get("error")
                raise _agent_failed(session_id, str(error) if error else None, ending)
        if now >= deadline:
            raise AgentTimeout(
                f"the agent of session {session_id} did not report ready within {timeout:g}s",
                session_id=str(session_id), timeout_seconds=timeout, agent_status=last)
        time.sleep(AGENT_POLL_SECONDS)


def _agent_failed(session_id: UUID | str, error: str | None,
                  ending: str | None = None) -> AgentFailed:
    parts = [f"the agent reported: {error}"] if error else []
    if ending:
        parts.append(f"the agent {ending}")
    return AgentFailed("; ".join(parts), session_id=str(session_id), agent_error=error,
                       snapshot_failed=bool(error and error.startswith(SNAPSHOT_ERROR_PREFIX)))
