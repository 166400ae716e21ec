"""Typed Python client over the file RPCs, acting as a user (RLS enforced) or the service."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import BaseModel

from velocity.db import Actor, Database
from velocity.errors import lone_surrogate_error, nul_in_text_error


class ProjectFile(BaseModel):
    """One version of a path: a row of project_files."""

    id: UUID
    project_id: UUID
    file_path: str
    file_type: str
    content: str | None
    content_hash: str | None
    size_bytes: int
    storage_key: str | None
    is_deleted: bool
    version: int
    parent_version_id: UUID | None
    is_current_version: bool
    created_by: UUID
    last_modified_by: UUID | None
    created_at: datetime
    updated_at: datetime


class CurrentFile(BaseModel):
    """A row of list_current_files."""

    file_path: str
    file_type: str
    content: str | None
    content_hash: str
    version: int
    size_bytes: int
    storage_key: str | None
    updated_at: datetime


class BulkItem(BaseModel):
    file_path: str
    action: Literal["update", "delete"]
    version: int
    changed: bool


class BulkResult(BaseModel):
    success: bool
    project_id: UUID
    seq: int | None
    changed: int
    unchanged: int
    files: list[BulkItem]


EventType = Literal["file:update", "file:delete", "bulk:apply", "snapshot:ready"]


class FileEvent(BaseModel):
    """An event as consumers see it (content joined back), from events_since."""

    seq: int
    type: EventType
    payload: dict[str, Any]
    actor: UUID | None
    created_at: datetime


def _storable_text(field: str, value: str | None) -> None:
    """Refuse what PostgreSQL text cannot hold (NUL, lone surrogates) before sending it."""
    if value is None:
        return
    if "\x00" in value:
        raise nul_in_text_error(field)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise lone_surrogate_error(field, value[error.start]) from None


class FileClient:
    """One method per file RPC, every call acting as `actor` in its own transaction."""

    def __init__(self, db: Database, actor: Actor) -> None:
        self.db = db
        self.actor = actor

    def _call(self, function: str, **args: Any) -> list[dict[str, Any]]:
        return self.db.call(self.actor, function, args)

    def upsert(self, project_id: UUID | str, path: str, content: str,
               file_type: str | None = None, expected_version: int | None = None) -> ProjectFile:
        _storable_text("file_path", path)
        _storable_text("content", content)
        _storable_text("file_type", file_type)
        (row,) = self._call("upsert_project_file", project_uuid=str(project_id),
                            p_file_path=path, p_content=content, p_file_type=file_type,
                            expected_version=expected_version)
        return ProjectFile.model_validate(row)

    def upsert_binary(self, project_id: UUID | str, path: str, storage_key: str, sha256: str,
                      size: int, file_type: str = "binary",
                      expected_version: int | None = None) -> ProjectFile:
        _storable_text("file_path", path)
        (row,) = self._call("upsert_project_binary_file", project_uuid=str(project_id),
                            p_file_path=path, p_storage_key=storage_key, p_content_hash=sha256,
                            p_size_bytes=size, p_file_type=file_type,
                            expected_version=expected_version)
        return ProjectFile.model_validate(row)

    def delete(self, project_id: UUID | str, path: str,
               expected_version: int | None = None) -> ProjectFile:
        _storable_text("file_path", path)
        (row,) = self._call("delete_project_file", project_uuid=str(project_id),
                            p_file_path=path, expected_version=expected_version)
        return ProjectFile.model_validate(row)

    def list_current(self, project_id: UUID | str) -> list[CurrentFile]:
        rows = self._call("list_current_files", project_uuid=str(project_id))
        return [CurrentFile.model_validate(row) for row in rows]

    def bulk_upsert(self, project_id: UUID | str,
                    files: Iterable[Mapping[str, Any]]) -> BulkResult:
        items = [dict(item) for item in files]
        for item in items:
            for field in ("file_path", "content"):
                value = item.get(field)
                _storable_text(field, value if isinstance(value, str) else None)
        (row,) = self._call("bulk_upsert_project_files", project_uuid=str(project_id),
                            files=Jsonb(items))
        return BulkResult.model_validate(row["bulk_upsert_project_files"])

    def bulk_delete(self, project_id: UUID | str, paths: Iterable[str]) -> BulkResult:
        paths = list(paths)
        for path in paths:
            _storable_text("file_path", path)
        (row,) = self._call("bulk_delete_project_files", project_uuid=str(project_id),
                            p_file_paths=paths)
        return BulkResult.model_validate(row["bulk_delete_project_files"])

    def history(self, project_id: UUID | str, path: str) -> list[ProjectFile]:
        _storable_text("file_path", path)
        rows = self._call("file_history", project_uuid=str(project_id), p_file_path=path)
        return [ProjectFile.model_validate(row) for row in rows]

    def restore(self, project_id: UUID | str, path: str, version: int,
                expected_version: int | None = None) -> ProjectFile:
        _storable_text("file_path", path)
        (row,) = self._call("restore_file_version", project_uuid=str(project_id),
                            p_file_path=path, p_version=version,
                            expected_version=expected_version)
        return ProjectFile.model_validate(row)

    def events_since(self, project_id: UUID | str, since_seq: int,
                     max_rows: int = 1000) -> list[FileEvent]:
        rows = self._call("events_since", project_uuid=str(project_id), since_seq=since_seq,
                          max_rows=max_rows)
        return [FileEvent.model_validate(row) for row in rows]

    def is_feature_enabled(self, flag_key: str, user_id: UUID | str | None = None) -> bool:
        _storable_text("flag_key", flag_key)
        (row,) = self._call("is_feature_enabled", flag_key=flag_key,
                            user_id=str(user_id) if user_id else None)
        return bool(row["is_feature_enabled"])
