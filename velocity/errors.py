"""Errors with the facts in them, raised where they are known and turned into replies at the edge.

The database contract raises a stable SQLSTATE per kind of failure (see sql/ and
docs/database.md); `from_database_error` maps each to its type here.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg


class VelocityError(Exception):
    """Base of the errors a caller can act on. `code` is stable; `http_status` is for the API."""

    code = "velocity_error"
    http_status = 500

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.facts}


class InvalidInput(VelocityError):
    """The request itself is wrong; retrying it unchanged can never succeed."""

    code = "invalid_input"
    http_status = 400


class InvalidPath(InvalidInput):
    code = "invalid_path"

    @property
    def reason(self) -> str:
        return str(self.facts.get("reason", ""))


class ContentTooLarge(InvalidInput):
    code = "content_too_large"
    http_status = 413


class InvalidFileType(InvalidInput):
    code = "invalid_file_type"


class InvalidBulkPayload(InvalidInput):
    code = "invalid_bulk_payload"


class BulkTooLarge(InvalidInput):
    code = "bulk_too_large"
    http_status = 413


class PathConflict(VelocityError):
    """A file would sit where a directory is, or the reverse."""

    code = "path_conflict"
    http_status = 409


class VersionConflict(VelocityError):
    code = "version_conflict"
    http_status = 409

    @property
    def current(self) -> int:
        return int(self.facts["current_version"])


class PermissionDenied(VelocityError):
    code = "permission_denied"
    http_status = 403


class AuthenticationRequired(PermissionDenied):
    code = "authentication_required"
    http_status = 401


class NotFound(VelocityError):
    code = "not_found"
    http_status = 404


class RateLimited(VelocityError):
    code = "rate_limited"
    http_status = 429

    @property
    def retry_after_seconds(self) -> float:
        return float(self.facts["retry_after_ms"]) / 1000


class EventsPruned(VelocityError):
    """The events asked for are older than the retained log: re-hydrate from a snapshot."""

    code = "events_pruned"
    http_status = 410


_BY_SQLSTATE: dict[str, type[VelocityError]] = {
    "22V01": InvalidPath,
    "22V02": ContentTooLarge,
    "22V03": InvalidFileType,
    "22V04": InvalidBulkPayload,
    "22V05": BulkTooLarge,
    "22V07": EventsPruned,
    "23V01": PathConflict,
    "23V02": VersionConflict,
    "28000": AuthenticationRequired,
    "42501": PermissionDenied,
    "P0002": NotFound,
    "53V01": RateLimited,
    "22004": InvalidInput,  # null_value_not_allowed: a required argument is missing
    "22023": InvalidInput,  # invalid_parameter_value
    "22P02": InvalidInput,  # invalid_text_representation: e.g. a malformed uuid
    "22P05": InvalidInput,  # untranslatable_character: e.g. \u0000 in JSON
    "22021": InvalidInput,  # character_not_in_repertoire
    "22003": InvalidInput,  # numeric_value_out_of_range
}


def sqlstate_of(kind: type[VelocityError]) -> str | None:
    """The contract's SQLSTATE for an error type (the first listed), e.g. for errors raised
    before the database that an edge must still report PostgREST-style."""
    for sqlstate, mapped in _BY_SQLSTATE.items():
        if mapped is kind:
            return sqlstate
    return None


def from_database_error(error: psycopg.Error) -> VelocityError | None:
    """The typed error for a database error of the contract, or None if it is not one."""
    sqlstate = error.sqlstate or ""
    kind = _BY_SQLSTATE.get(sqlstate)
    if kind is None:
        return None
    diag = error.diag
    message = diag.message_primary or str(error)
    facts: dict[str, Any] = {}
    if diag.message_detail:
        try:
            detail = json.loads(diag.message_detail)
        except ValueError:
            facts["detail"] = diag.message_detail
        else:
            if isinstance(detail, dict):
                facts.update(detail)
    return kind(message, **facts)


def nul_in_text_error(field: str) -> InvalidInput:
    """PostgreSQL text cannot hold NUL; psycopg refuses it before sending. Say so clearly."""
    if field == "file_path":
        return InvalidPath("invalid path: contains a NUL character", reason="control_character")
    return InvalidInput(f"{field} contains a NUL character, which text cannot hold")


def lone_surrogate_error(field: str, surrogate: str) -> InvalidInput:
    """A lone surrogate (U+D800-U+DFFF alone) is not Unicode text: no UTF-8 can encode it."""
    text = f"{field} holds a lone surrogate ({surrogate!r}), which is not Unicode text"
    if field == "file_path":
        return InvalidPath(f"invalid path: {text}", reason="invalid_unicode")
    return InvalidInput(text)
