"""Reading legacy data, never writing it: the `project_files` variants and the bucket."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import psycopg
from botocore.exceptions import ClientError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from velocity.errors import InvalidInput
from velocity.storage import CHUNK_SIZE, ObjectNotFound, ObjectStore, Readable, S3Store

Variant = Literal["rich", "rls", "frontend"]

# Types the legacy writers used for directory rows.
DIRECTORY_TYPES = frozenset({"directory", "folder", "dir"})


@dataclass(frozen=True)
class LegacyRow:
    """One row of a legacy `project_files`, in one shape whatever the variant."""

    source_id: str
    project_id: UUID
    path: str
    file_type: str | None
    content: str | None
    stored_hash: str | None
    version: int | None
    is_current: bool | None  # None: the variant has no current flag
    is_directory: bool
    is_binary: bool
    storage_ref: str | None  # a key in the bucket, when the row names one
    author: str | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class LegacyProject:
    """A legacy `projects` row: what creating the project in the target needs."""

    project_id: UUID
    name: str | None
    owner: str | None


def detect_variant(columns: set[str]) -> Variant:
    """Which legacy `project_files` this is, by its columns; InvalidInput naming them if none."""
    if {"is_deleted", "storage_key"} <= columns:
        raise InvalidInput("the source project_files is already Velocity's schema; "
                           "nothing to adopt", columns=sorted(columns))
    if not {"project_id", "content"} <= columns:
        raise InvalidInput("the source project_files has no project_id or content column "
                           f"(columns: {', '.join(sorted(columns))})", columns=sorted(columns))
    if "file_path" in columns and {"is_current_version", "content_hash"} <= columns:
        return "rich"
    if "file_path" in columns and "checksum" in columns:
        return "rls"
    if "path" in columns and "file_path" not in columns:
        return "frontend"
    raise InvalidInput("the source project_files matches no known legacy variant "
                       f"(columns: {', '.join(sorted(columns))})", columns=sorted(columns))


def redacted_url(url: str) -> str:
    """A database URL without its password, for records and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    params.pop("password", None)
    return make_conninfo(**{name: str(value) for name, value in params.items()
                            if value is not None})


class LegacyDatabase:
    """A legacy PostgreSQL read in read-only transactions: it cannot be changed through this."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        try:
            self._inspect()
        except BaseException:
            self.close()
            raise

    def _inspect(self) -> None:
        with self._read() as conn:
            self.columns = _columns(conn, "project_files")
            if not self.columns:
                raise InvalidInput("the source database has no project_files table",
                                   source=redacted_url(self.url))
            self.variant = detect_variant(self.columns)
            self.project_columns = _columns(conn, "projects")
            (id_type,) = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = to_regclass('project_files') AND attname = 'project_id'"
            ).fetchone()  # type: ignore[misc]
        # Compare in the column's own type, so an index on project_id serves the query.
        self._project_match = sql.SQL("project_id = %s::uuid" if id_type == "uuid"
                                      else "project_id::text = %s")

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection]:
        """One read-only REPEATABLE READ transaction on the reader's connection (opened on
        first use, so one connection serves a whole run)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=False)
            self._conn.read_only = True
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            yield self._conn
        finally:
            self._conn.rollback()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def project_ids(self) -> list[UUID]:
        with self._read() as conn:
            rows = conn.execute("SELECT DISTINCT project_id::text FROM project_files"
                                " WHERE project_id IS NOT NULL ORDER BY 1").fetchall()
        return [UUID(row[0]) for row in rows]

    def rows(self, project_id: UUID) -> list[LegacyRow]:
        """Every row of the project, in the source's own order of id."""
        query = sql.SQL("SELECT {} FROM project_files WHERE {} ORDER BY 1").format(
            sql.SQL(", ").join(self._row_columns()), self._project_match)
        with self._read() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(query, (str(project_id),))
            return [_legacy_row(project_id, record) for record in cursor]

    def project(self, project_id: UUID) -> LegacyProject | None:
        if "id" not in self.project_columns:
            return None
        name = _first(self.project_columns, "name", "title")
        owner = _first(self.project_columns, "owner_id", "user_id", "created_by")
        query = sql.SQL("SELECT {}::text, {}::text FROM projects WHERE id::text = %s").format(
            name, owner)
        with self._read() as conn:
            row = conn.execute(query, (str(project_id),)).fetchone()
        if row is None:
            return None
        return LegacyProject(project_id, row[0], row[1])

    def _row_columns(self) -> list[sql.Composable]:
        cols = self.columns
        metadata = "metadata" in cols

        def meta(key: str) -> sql.Composable:
            return sql.SQL("metadata ->> {}").format(sql.Literal(key)) if metadata else sql.NULL

        def flag(column: str, key: str) -> sql.Composable:
            own = sql.SQL("{}::boolean").format(sql.Identifier(column)) if column in cols \
                else sql.NULL
            return sql.SQL("coalesce({}, ({}) = 'true', false)").format(own, meta(key))

        author = [sql.Identifier(c) for c in ("last_modified_by", "created_by", "user_id")
                  if c in cols]
        return [
            sql.SQL("{}::text AS source_id").format(_first(cols, "id") if "id" in cols
                                                    else sql.SQL("ctid")),
            sql.SQL("{} AS path").format(_first(cols, "file_path", "path")),
            sql.SQL("{}::text AS file_type").format(_first(cols, "file_type", "type")),
            sql.SQL("content::text AS content"),
            sql.SQL("{}::text AS stored_hash").format(_first(cols, "content_hash", "checksum")),
            sql.SQL("{}::integer AS version").format(_first(cols, "version")),
            sql.SQL("{}::boolean AS is_current").format(_first(cols, "is_current_version")),
            sql.SQL("{} AS is_directory").format(flag("is_directory", "is_directory")),
            sql.SQL("{} AS is_binary").format(flag("is_binary", "is_binary")),
            sql.SQL("{} AS storage_ref").format(meta("storage_path")),
            sql.SQL("coalesce({})::text AS author").format(
                sql.SQL(", ").join(author) if author else sql.NULL),
            sql.SQL("{}::timestamptz AS created_at").format(_first(cols, "created_at")),
            sql.SQL("{}::timestamptz AS updated_at").format(_first(cols, "updated_at")),
        ]


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)"
        " AND a.attnum > 0 AND NOT a.attisdropped", (table,)).fetchall()
    return {row[0] for row in rows}


def _first(columns: set[str], *names: str) -> sql.Composable:
    for name in names:
        if name in columns:
            return sql.Identifier(name)
    return sql.NULL


def _legacy_row(project_id: UUID, record: dict) -> LegacyRow:
    return LegacyRow(project_id=project_id, **record)


class LegacyBucket:
    """The seeds' `project-files` bucket: objects at `{project_id}/{file_path}`."""

    def __init__(self, store: ObjectStore, url: str) -> None:
        self.store = store
        self.url = url
        self._keys: dict[str, list[str]] | None = None

    def folders(self) -> dict[str, list[str]]:
        """Keys grouped by their first segment (a project id, when the layout is kept)."""
        if self._keys is None:
            grouped: dict[str, list[str]] = defaultdict(list)
            for key in self.store.list():
                folder, _, _ = key.partition("/")
                grouped[folder].append(key)
            self._keys = dict(grouped)
        return self._keys

    def project_ids(self) -> list[UUID]:
        return sorted(UUID(folder) for folder in self.folders() if is_uuid(folder))

    def stray_keys(self) -> list[str]:
        """Keys outside any project folder: they cannot be attributed to a project."""
        return sorted(key for folder, keys in self.folders().items() if not is_uuid(folder)
                      for key in keys)

    def keys(self, project_id: UUID) -> list[str]:
        return self.folders().get(str(project_id), [])

    def read(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def sha256(self, key: str) -> tuple[str, int]:
        """The sha256 and size of an object, streamed."""
        with self.open(key) as stream:
            return stream_sha256(stream)

    @contextmanager
    def open(self, key: str) -> Iterator[Readable]:
        """An object by its key as listed. Legacy keys need not follow our key rules (a
        backslash, say), so S3 is read without them; a directory store keeps them."""
        if not isinstance(self.store, S3Store):
            with self.store.open(key) as stream:
                yield stream
            return
        try:
            response = self.store.client.get_object(Bucket=self.store.bucket, Key=key)
        except ClientError as error:
            raise ObjectNotFound(key) from error
        body = response["Body"]
        try:
            yield body
        finally:
            body.close()


def object_sha256(store: ObjectStore, key: str) -> tuple[str, int]:
    """The sha256 and size of an object of our own store, streamed."""
    with store.open(key) as stream:
        return stream_sha256(stream)


def stream_sha256(stream: Readable) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def redacted_storage_url(url: str) -> str:
    """A storage URL without its secret key."""
    head, _, query = url.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith("secret_access_key=")]
    return head + ("?" + "&".join(kept) if kept else "")


def is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True
