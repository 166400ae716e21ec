"""`POST /rest/v1/rpc/{function}`: PostgREST's calling convention for the file RPCs only, so
`supabase.rpc('upsert_project_file', {...})` works unchanged against the embedded stack.

Named JSON arguments in, results shaped as PostgREST shapes them (a single composite → an
object, a set → an array, a scalar → the value), errors in PostgREST's shape (see errors.py).
The call acts as the bearer's user through `Actor.user`, so the functions' own checks and
row-level security apply for real; the service key acts as the service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import Caller, require_caller
from orchestrator.api.context import database, services
from orchestrator.api.errors import PostgrestError, PostgrestErrorBody
from velocity.jsontext import MalformedJson, loads_strict

ArgType = Literal["uuid", "text", "integer", "bigint", "jsonb", "text[]"]
Shape = Literal["object", "array", "value"]
# The SQL integer types' ranges: a JSON number outside one is 22003, as PostgreSQL says it.
INTEGER_RANGES = {"integer": 2**31, "bigint": 2**63}


@dataclass(frozen=True)
class Param:
    name: str
    type: ArgType
    required: bool = True


@dataclass(frozen=True)
class Function:
    """One callable function: its parameters (sql/0007, 0008, 0010) and its result shape."""

    params: tuple[Param, ...]
    shape: Shape

    def accepts(self, names: set[str]) -> bool:
        known = {param.name for param in self.params}
        required = {param.name for param in self.params if param.required}
        return names <= known and required <= names


_PROJECT = Param("project_uuid", "uuid")
_PATH = Param("p_file_path", "text")
_EXPECTED = Param("expected_version", "integer", required=False)

FUNCTIONS: dict[str, Function] = {
    "upsert_project_file": Function(
        (_PROJECT, _PATH, Param("p_content", "text"), Param("p_file_type", "text", False),
         _EXPECTED), "object"),
    "delete_project_file": Function((_PROJECT, _PATH, _EXPECTED), "object"),
    "list_current_files": Function((_PROJECT,), "array"),
    "bulk_upsert_project_files": Function((_PROJECT, Param("files", "jsonb")), "value"),
    "bulk_delete_project_files": Function((_PROJECT, Param("p_file_paths", "text[]")),
                                          "value"),
    "file_history": Function((_PROJECT, _PATH), "array"),
    "restore_file_version": Function(
        (_PROJECT, _PATH, Param("p_version", "integer"), _EXPECTED), "object"),
    "events_since": Function(
        (_PROJECT, Param("since_seq", "bigint"), Param("max_rows", "integer", False)), "array"),
    "is_feature_enabled": Function(
        (Param("flag_key", "text"), Param("user_id", "uuid", False)), "value"),
}

router = APIRouter(tags=["postgrest"])

_FAILURES: list[tuple[int | str, str]] = [
    (400, "Invalid input (22xxx, P0001) or an unreadable body (PGRST102)."),
    (401, "No or an invalid token (42501 for anonymous, PGRST301, PGRST303)."),
    (403, "Not a member, or a viewer writing (42501)."),
    (404, "Unknown function or arguments (PGRST202); project, file or version not "
          "found (P0002)."),
    (409, "A stale expected_version (23V02) or a path conflict (23V01)."),
    (429, "Rate limited (53V01); see Retry-After."),
    ("default", "Any other failure, in the same shape (e.g. 503 PGRST000)."),
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": PostgrestErrorBody, "description": description}
    for status, description in _FAILURES}


def count_call(request: Request, function: str) -> None:
    """Counted before anything can fail, so errors / requests is a true ratio."""
    label = function if function in FUNCTIONS else "unknown"
    services(request).metrics.rpc_requests.labels(function=label).inc()


@router.post(
    "/rest/v1/rpc/{function}",
    name="rpc",
    dependencies=[Depends(count_call)],
    summary="Call a file RPC the way PostgREST does",
    responses={200: {"description": "The function's result: an object (upsert_project_file, "
                     "delete_project_file, restore_file_version), an array "
                     "(list_current_files, file_history, events_since) or a value "
                     "(bulk_upsert_project_files, bulk_delete_project_files: an object; "
                     "is_feature_enabled: a boolean)."}, **_ERRORS},
    openapi_extra={"requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": True,
            "description": "The function's arguments by name, e.g. {\"project_uuid\": …, "
                           "\"p_file_path\": …, \"p_content\": …}."}}}}},
)
async def call_rpc(
    request: Request,
    function: Annotated[str, Path(description="One of: " + ", ".join(FUNCTIONS))],
    caller: Annotated[Caller, Depends(require_caller)],
) -> JSONResponse:
    spec = FUNCTIONS.get(function)
    arguments = await _arguments(request)
    if spec is None or not spec.accepts(set(arguments)):
        raise _not_found(function, arguments)
    values = {param.name: _bound(param, arguments[param.name])
              for param in spec.params if param.name in arguments}
    db = database(request)
    rows = await run_in_threadpool(db.call, caller.actor, function, values)
    return JSONResponse(jsonable_encoder(_shaped(function, spec.shape, rows)))


async def _arguments(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        arguments = loads_strict(body)
    except MalformedJson as error:
        raise PostgrestError("PGRST102", 400, "Empty or invalid json",
                             details=str(error)[:200]) from None
    if not isinstance(arguments, dict):
        raise PostgrestError("PGRST102", 400, "Empty or invalid json",
                             details="the body must be a JSON object of named arguments")
    return arguments


def _not_found(function: str, arguments: dict[str, Any]) -> PostgrestError:
    names = ", ".join(sorted(arguments))
    hint = None
    if function not in FUNCTIONS:
        close = [name for name in FUNCTIONS if name.split("_")[0] == function.split("_")[0]]
        hint = f"Perhaps you meant to call the function public.{close[0]}" if close else None
    return PostgrestError(
        "PGRST202", 404,
        f"Could not find the function public.{function}({names}) in the schema cache",
        details=f"Searched for the function public.{function} with parameters {names or '()'} "
                "or with a single unnamed json/jsonb parameter, but no matches were found in "
                "the schema cache.",
        hint=hint)


def _bound(param: Param, value: Any) -> Any:
    """The JSON value as the parameter's SQL type takes it; PostgreSQL checks the rest."""
    if value is None:
        return None
    if param.type == "jsonb":
        return Jsonb(value)
    if param.type in ("integer", "bigint"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(param, value)
        if not -INTEGER_RANGES[param.type] <= value < INTEGER_RANGES[param.type]:
            raise PostgrestError("22003", 400, f"value \"{str(value)[:40]}\" is out of range "
                                 f"for type {param.type}", details=f"argument {param.name}")
        return value
    if param.type == "text[]":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _wrong_type(param, value)
        for item in value:
            _refuse_nul(item)
        return value
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    elif not isinstance(value, str):
        value = json.dumps(value)
    _refuse_nul(value)
    return value


def _wrong_type(param: Param, value: Any) -> PostgrestError:
    return PostgrestError("22P02", 400, f'invalid input syntax for type {param.type}: '
                          f'"{json.dumps(value)[:200]}"',
                          details=f"argument {param.name}")


def _refuse_nul(text: str) -> None:
    if "\x00" in text:
        raise PostgrestError("22P05", 400, "unsupported Unicode escape sequence",
                             details="\\u0000 cannot be converted to text.")


def _shaped(function: str, shape: Shape, rows: list[dict[str, Any]]) -> Any:
    if shape == "array":
        return rows
    if shape == "object":
        return rows[0] if rows else None
    return rows[0][function] if rows else None
