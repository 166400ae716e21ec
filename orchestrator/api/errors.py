"""The one place where failures become HTTP replies.

Routes raise typed errors where the facts are known. Here they become either the API's
body, `{"code", "message", ...facts}` with the error's `http_status`, or — under
`/rest/v1/` — PostgREST's `{"code", "message", "details", "hint"}` with PostgREST's status
for the SQLSTATE, so supabase-js sees exactly what a Supabase project would send.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from orchestrator.api.context import services
from velocity.errors import (
    AuthenticationRequired,
    InvalidInput,
    RateLimited,
    VelocityError,
    sqlstate_of,
)

log = logging.getLogger("velocity.orchestrator")

REST_PREFIX = "/rest/v1/"



class ErrorBody(BaseModel):
    """Every failure of the API (outside /rest/v1): a stable code, a message, the facts."""

    code: str
    message: str
    model_config = {"extra": "allow"}


class FieldProblem(BaseModel):
    field: str
    location: str
    message: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: the request did not fit the schema; `errors` names every bad field."""

    code: str = "invalid_request"
    message: str
    errors: list[FieldProblem]


class PostgrestErrorBody(BaseModel):
    """PostgREST's error shape: a SQLSTATE or a PGRSTnnn code."""

    code: str
    message: str
    details: str | None = None
    hint: str | None = None


class PostgrestError(VelocityError):
    """A failure PostgREST itself reports before the database runs: unknown function
    (PGRST202), unreadable body (PGRST102), an argument of the wrong JSON type (22P02)."""

    def __init__(self, code: str, status: int, message: str, details: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status
        self.details = details
        self.hint = hint


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route of the API that can fail with these statuses."""
    described: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = ValidationErrorBody if status == 422 else ErrorBody
        described[status] = {"model": model}
    return described


class RouteFailure(PostgrestError):
    """Starlette's own refusals (no such route, a method not allowed, a body FastAPI cannot
    parse), told in the shape of the path's API instead of `{"detail"}`."""


_ROUTE_FAILURE_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(VelocityError, _reply)
    app.add_exception_handler(RequestValidationError, _reply)
    app.add_exception_handler(psycopg.Error, _reply)
    app.add_exception_handler(StarletteHTTPException, _reply_route_failure)


async def _reply_route_failure(request: Request, error: Exception) -> Response:
    if request.scope["type"] != "http" or not isinstance(error, StarletteHTTPException):
        raise error
    status = error.status_code
    failure = RouteFailure(_ROUTE_FAILURE_CODES.get(status, f"http_{status}"), status,
                           str(error.detail))
    response = await _reply(request, failure)
    response.headers.update(error.headers or {})
    return response


async def _reply(request: Request, error: Exception) -> JSONResponse:
    if request.scope["type"] != "http":
        raise error  # the gateway's websockets answer in their own protocol
    if request.url.path.startswith(REST_PREFIX):
        status, body, headers = _postgrest_reply(request, error)
        services(request).metrics.rpc_errors.labels(code=body.code).inc()
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)
    status, content, headers = _api_reply(error)
    return JSONResponse(content, status_code=status, headers=headers)


def _api_reply(error: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    if isinstance(error, RequestValidationError):
        problems = [_field_problem(item) for item in error.errors()]
        message = "; ".join(f"{p.field}: {p.message}" for p in problems) or "invalid request"
        body = ValidationErrorBody(message=message, errors=problems)
        return 422, body.model_dump(), {}
    if isinstance(error, VelocityError):
        return error.http_status, jsonable_encoder(error.to_dict()), _headers_for(error)
    if isinstance(error, psycopg.OperationalError):
        log.warning("database unavailable: %s", error)
        return 503, {"code": "database_unavailable", "message": "the database is unavailable"}, {}
    log.error("unexpected database error", exc_info=error)
    return 500, {"code": "internal_error", "message": "unexpected database error"}, {}


def _field_problem(item: Any) -> FieldProblem:
    location = [str(part) for part in item.get("loc", ())]
    where = location[0] if location else "body"
    field = ".".join(location[1:]) or where
    return FieldProblem(field=field, location=where, message=str(item.get("msg", "")),
                        type=str(item.get("type", "")))


def _headers_for(error: VelocityError) -> dict[str, str]:
    if isinstance(error, RateLimited):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after_seconds)))}
    if isinstance(error, AuthenticationRequired):
        reason = str(error.facts.get("reason", "missing_token"))
        if reason == "missing_token":
            return {"WWW-Authenticate": "Bearer"}
        return {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'}
    return {}


# -- PostgREST --------------------------------------------------------------------------------

def _postgrest_reply(request: Request, error: Exception
                     ) -> tuple[int, PostgrestErrorBody, dict[str, str]]:
    if isinstance(error, PostgrestError):
        body = PostgrestErrorBody(code=error.code, message=error.message,
                                  details=error.details, hint=error.hint)
        return error.http_status, body, {}
    if isinstance(error, RequestValidationError):
        return 400, PostgrestErrorBody(code="PGRST102", message="Empty or invalid json"), {}
    if isinstance(error, AuthenticationRequired) and "reason" in error.facts:
        return _postgrest_unauthenticated(request, str(error.facts["reason"]), error)
    if isinstance(error, psycopg.Error):
        return _postgrest_database_error(error)
    assert isinstance(error, VelocityError)
    cause = error.__cause__
    if isinstance(cause, psycopg.Error) and cause.sqlstate:
        status, body, _ = _postgrest_database_error(cause)
    else:
        state = _sqlstate_of(error)
        details = json.dumps(error.facts, default=str) if error.facts else None
        body = PostgrestErrorBody(code=state, message=error.message, details=details)
        status = postgrest_status(state)
    return status, body, _headers_for(error)


def _sqlstate_of(error: VelocityError) -> str:
    """The contract's SQLSTATE for an error raised before the database (most specific type)."""
    for kind in type(error).__mro__:
        if kind is InvalidInput:
            return "22023"  # invalid_parameter_value, the general one
        if isinstance(kind, type) and issubclass(kind, VelocityError):
            state = sqlstate_of(kind)
            if state is not None:
                return state
    return "P0001"  # raise_exception: PostgREST's default for a function's own error


def _postgrest_unauthenticated(request: Request, reason: str, error: VelocityError
                               ) -> tuple[int, PostgrestErrorBody, dict[str, str]]:
    headers = _headers_for(error)
    if reason == "missing_token":
        # What PostgREST answers an anonymous caller: anon may not execute the RPCs.
        function = request.path_params.get("function", "")
        body = PostgrestErrorBody(code="42501",
                                  message=f"permission denied for function {function}")
        return 401, body, headers
    code = "PGRST303" if reason == "expired" else "PGRST301"
    message = "JWT expired" if reason == "expired" else f"JWT invalid: {reason}"
    return 401, PostgrestErrorBody(code=code, message=message), headers


def _postgrest_database_error(error: psycopg.Error
                              ) -> tuple[int, PostgrestErrorBody, dict[str, str]]:
    if isinstance(error, psycopg.OperationalError) and not error.sqlstate:
        log.warning("database unavailable: %s", error)
        body = PostgrestErrorBody(code="PGRST000", message="Could not connect to the database")
        return 503, body, {}
    state = error.sqlstate or "XX000"
    diag = error.diag
    body = PostgrestErrorBody(code=state, message=diag.message_primary or str(error),
                              details=diag.message_detail, hint=diag.message_hint)
    return postgrest_status(state), body, {}


def postgrest_status(sqlstate: str) -> int:
    """PostgREST's HTTP status for a SQLSTATE, with the contract's own codes placed:
    conflicts 409 (23V01, 23V02) and the rate limit 429 (53V01)."""
    if sqlstate == "42501":
        return 403
    if sqlstate == "53V01":
        return 429
    if sqlstate in ("P0002", "42883", "42P01"):
        return 404
    if sqlstate.startswith("23"):
        return 409
    if sqlstate.startswith("28"):
        return 403
    if sqlstate == "25006":
        return 405
    if sqlstate.startswith("53"):
        return 503
    if sqlstate[:2] in {"08", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0",
                        "HV", "XX"}:
        return 500
    return 400
