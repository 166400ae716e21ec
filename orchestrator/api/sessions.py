"""Preview sessions over HTTP: start, stop, and poll the status of one.

Starting only opens the session row and submits `provision-session`; the flow does the
work and the client polls `statusUrl` until `active` (or `error`).
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from flows.catalogue import PROVISION_SESSION, STOP_SESSION
from orchestrator.api.auth import Caller, CurrentCaller
from orchestrator.api.context import database, services
from orchestrator.api.errors import error_responses
from velocity.db import Database
from velocity.errors import PermissionDenied, VelocityError
from velocity.runtimes import RUNTIMES
from velocity.sessions import (
    SessionNotLive,
    SessionRow,
    SessionStatus,
    get_session,
    open_session,
    set_flow_run,
)

router = APIRouter(prefix="/sessions", tags=["sessions"])


class StartSessionRequest(BaseModel):
    projectId: UUID = Field(description="The project to preview.")
    runtime: str | None = Field(
        default=None, description="Where the container runs; default VELOCITY_DEFAULT_RUNTIME.")
    userId: UUID | None = Field(
        default=None, description="For whom the service starts the session: required with "
        "the service key (422 without it); a user starts sessions only for themself.")

    @field_validator("runtime")
    @classmethod
    def known_runtime(cls, value: str | None) -> str | None:
        if value is not None and value not in RUNTIMES:
            raise ValueError(f"unknown runtime; known runtimes: {', '.join(sorted(RUNTIMES))}")
        return value


class StartSessionResponse(BaseModel):
    sessionId: UUID
    status: SessionStatus
    statusUrl: str = Field(description="Poll it until status is active or error.")
    flowRunId: UUID | None = Field(description="The provision-session flow run (Prefect).")


class StopSessionRequest(BaseModel):
    sessionId: UUID


class StopSessionResponse(BaseModel):
    status: Literal["ok"] = "ok"
    flowRunId: UUID | None = Field(
        description="The stop-session flow run; null when the session had already ended.")


class SessionStatusResponse(BaseModel):
    sessionId: UUID
    status: SessionStatus
    containerUrl: str | None
    containerId: str | None
    appliedSeq: int | None = Field(description="The last event seq the agent applied.")
    lagMs: int | None = Field(description="The agent's reported lag behind the event log.")
    error: str | None
    flowRunId: UUID | None


@router.post(
    "/start",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StartSessionResponse,
    responses={200: {"model": StartSessionResponse,
                     "description": "The caller already has a live session on the project: "
                                    "that one, with its provisioning flow run."},
               202: {"description": "A new session: provisioning was submitted."},
               **error_responses(401, 403, 404, 422, 503)},
)
async def start_session(body: StartSessionRequest, caller: CurrentCaller, request: Request,
                        response: Response) -> StartSessionResponse:
    """Open a preview session for a member of the project and start provisioning it."""
    user_id = _session_user(caller, body)
    settings = services(request).settings
    db = database(request)
    session, created = await run_in_threadpool(
        open_session, db, body.projectId, user_id, body.runtime or settings.default_runtime)
    flow_run_id = session.flow_run_id
    if created:
        flow_run_id = await _submit_provisioning(request, db, session)
    else:
        response.status_code = status.HTTP_200_OK
    return StartSessionResponse(
        sessionId=session.id, status=session.status,
        statusUrl=str(request.url_for("session_status", session_id=session.id)),
        flowRunId=flow_run_id)


def _session_user(caller: Caller, body: StartSessionRequest) -> UUID:
    if caller.user_id is not None:
        if body.userId is not None and body.userId != caller.user_id:
            raise PermissionDenied("a user can start sessions only for themself")
        return caller.user_id
    if body.userId is None:
        raise RequestValidationError([{
            "loc": ("body", "userId"), "type": "missing",
            "msg": "Field required when the service key starts a session"}])
    return body.userId


async def _submit_provisioning(request: Request, db: Database, session: SessionRow) -> UUID:
    """Submit provision-session; if Prefect refuses, end the row in `error` at once, so the
    user is not left holding a live session nobody provisions."""
    try:
        flow_run_id = await services(request).runner.submit(
            PROVISION_SESSION,
            {"project_id": str(session.project_id), "user_id": str(session.user_id),
             "runtime": session.runtime, "session_id": str(session.id)})
    except VelocityError as error:
        await run_in_threadpool(_fail_unprovisioned, db, session.id, error.message)
        raise
    try:
        await run_in_threadpool(set_flow_run, db, session.id, flow_run_id)
    except SessionNotLive:
        pass  # the run already failed (or was stopped) and recorded itself on the row
    return flow_run_id


def _fail_unprovisioned(db: Database, session_id: UUID, reason: str) -> None:
    with db.transaction() as conn:
        conn.execute("UPDATE preview_sessions SET status = 'error', error_message = %s,"
                     " updated_at = now() WHERE id = %s AND status = 'creating'",
                     (f"provisioning could not be started: {reason}", session_id))


@router.post("/stop", response_model=StopSessionResponse,
             responses=error_responses(401, 403, 404, 422, 503))
async def stop_session(body: StopSessionRequest, caller: CurrentCaller,
                       request: Request) -> StopSessionResponse:
    """Stop a session: allowed to its user, the project's owners and the service.

    Stopping a session that already ended (or failed) is a success with no flow run.
    """
    db = database(request)
    session = await run_in_threadpool(get_session, db, body.sessionId)
    if not caller.is_service and caller.user_id != session.user_id:
        role = await run_in_threadpool(project_role, db, session.project_id, caller.user_id)
        if role != "owner":
            raise PermissionDenied("only the session's user or a project owner may stop it",
                                   session_id=str(session.id))
    if not session.is_live:
        return StopSessionResponse(flowRunId=None)
    flow_run_id = await services(request).runner.submit(
        STOP_SESSION, {"session_id": str(session.id)})
    return StopSessionResponse(flowRunId=flow_run_id)


@router.get("/{session_id}/status", name="session_status",
            response_model=SessionStatusResponse,
            responses=error_responses(401, 403, 404, 422))
async def session_status(session_id: UUID, caller: CurrentCaller,
                         request: Request) -> SessionStatusResponse:
    """A session's state as its agent last reported it (members of its project only)."""
    db = database(request)
    session = await run_in_threadpool(get_session, db, session_id)
    if not caller.is_service and caller.user_id != session.user_id:
        role = await run_in_threadpool(project_role, db, session.project_id, caller.user_id)
        if role is None:
            raise PermissionDenied("not a member of the session's project",
                                   session_id=str(session.id))
    if session.status == "active":
        services(request).metrics.observe_session_start(session.id, session.created_at)
    return SessionStatusResponse(
        sessionId=session.id, status=session.status, containerUrl=session.container_url,
        containerId=session.container_id, appliedSeq=session.applied_seq,
        lagMs=session.lag_ms, error=session.error_message, flowRunId=session.flow_run_id)


def project_role(db: Database, project_id: UUID, user_id: UUID | None) -> str | None:
    """The user's role in the project (owner, editor, viewer), or None for a non-member."""
    with db.transaction() as conn:
        row = conn.execute("SELECT role FROM project_members"
                           " WHERE project_id = %s AND user_id = %s",
                           (project_id, user_id)).fetchone()
    return str(row[0]) if row else None

