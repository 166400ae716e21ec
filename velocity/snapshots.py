"""Snapshot building: a project's current files as a deterministic zip, with its watermark.

One REPEATABLE READ transaction reads the project's event seq (the watermark) and streams its
current files from a server-side cursor into the zip, so every event up to the watermark is
in the zip and none after it. The zip is spooled to a temporary file (memory stays bounded
whatever the project's size) and uploaded with its manifest; then a `project_snapshots` row
and a `snapshot:ready` event are recorded together. When no file changed since the last
snapshot, that one is returned and nothing is built or uploaded. Otherwise the last snapshot
is the base of the new one: each unchanged file's record is copied from its zip, and only
changed files are read and compressed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO
from urllib.parse import urlencode
from uuid import UUID

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from pydantic import BaseModel

from velocity.archive import (
    ArchiveEntry,
    BaseRecord,
    Manifest,
    base_records,
    snapshot_manifest_key,
    write_snapshot_zip,
)
from velocity.db import Database
from velocity.errors import NotFound
from velocity.storage import ObjectNotFound, ObjectStore, Readable, copy_stream
from velocity.zipformat import CorruptZip

log = logging.getLogger("velocity.snapshots")

SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
CURSOR_BATCH_ROWS = 200
READ_AHEAD_BATCHES = 2  # memory: about three batches of content at most
BINARY_CHUNK_BYTES = 1024 * 1024
BASE_READ_BYTES = 1024 * 1024


class SnapshotResult(BaseModel):
    """What a build returns (and `velocity snapshot build --json` prints, with a URL)."""

    snapshot_id: UUID
    project_id: UUID
    watermark: int
    files: int
    bytes: int
    sha256: str
    reused: bool
    storage_key: str
    manifest_key: str
    seconds: float


@dataclass(frozen=True)
class _ProjectSeqs:
    watermark: int
    file_seq: int


def build_snapshot(db: Database, store: ObjectStore, project_id: UUID | str, *,
                   force: bool = False) -> SnapshotResult:
    """Build (or reuse) the snapshot of a project's current files.

    `force` builds a new zip from the database alone, even if the last one matches (e.g.
    when its object was lost). Otherwise the latest snapshot, once its zip is verified
    against its sha256, serves as the base: a rebuild after a few edits costs a metadata
    scan, a copy of the base and the changed files. Both give the same bytes.
    """
    started = time.perf_counter()
    project_id = UUID(str(project_id))
    with db.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        seqs = _project_seqs(conn, project_id)
        reused = None if force else _reusable_snapshot(conn, project_id, seqs.file_seq)
    if reused is not None:
        _mark_used(db, reused.snapshot_id)
        return reused.model_copy(update={"seconds": time.perf_counter() - started})
    with db.pool.connection() as conn, conn.transaction(), contextlib.ExitStack() as stack:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        seqs = _project_seqs(conn, project_id)
        base = None if force else _open_base(stack, store, _latest_snapshot(conn, project_id))
        snapshot_id = uuid.uuid4()
        spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES))
        listed: list[dict[str, object]] = []
        entries = _current_file_entries(conn, store, project_id, listed, base)
        digest = write_snapshot_zip(entries, spool, presorted=True,
                                    base=base.file if base is not None else None)
        spool.seek(0)
        manifest = Manifest.model_validate({
            "project_id": project_id, "snapshot_id": snapshot_id, "watermark": seqs.watermark,
            "sha256": digest.sha256, "size": digest.size, "files": listed})
        store.put(manifest.zip_key, spool, content_type="application/zip")  # type: ignore[arg-type]
    store.put_bytes(manifest.manifest_key, manifest.dump_json(), content_type="application/json")
    with db.transaction() as conn:
        conn.execute(
            "SELECT internal.record_snapshot(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (project_id, snapshot_id, seqs.watermark, seqs.file_seq, digest.sha256, digest.size,
             len(listed), manifest.zip_key, manifest.manifest_key),
        )
    return SnapshotResult(
        snapshot_id=snapshot_id, project_id=project_id, watermark=seqs.watermark,
        files=len(listed), bytes=digest.size, sha256=digest.sha256, reused=False,
        storage_key=manifest.zip_key, manifest_key=manifest.manifest_key,
        seconds=time.perf_counter() - started,
    )


def snapshot_url(store: ObjectStore, snapshot: SnapshotResult, ttl_seconds: int) -> str:
    """The signed URL a container downloads, with the manifest's facts in its fragment
    (`#sha256=…&watermark=…&snapshot_id=…`): a fragment never reaches the server."""
    fragment = urlencode({"sha256": snapshot.sha256, "watermark": snapshot.watermark,
                          "snapshot_id": str(snapshot.snapshot_id)})
    return f"{store.signed_url(snapshot.storage_key, ttl_seconds)}#{fragment}"


def load_manifest(store: ObjectStore, project_id: UUID | str, snapshot_id: UUID | str) -> Manifest:
    key = snapshot_manifest_key(UUID(str(project_id)), UUID(str(snapshot_id)))
    return Manifest.load_json(store.get(key))


def _mark_used(db: Database, snapshot_id: UUID) -> None:
    """Reuse keeps a snapshot alive: cleanup ages snapshots by last_used_at."""
    with db.transaction() as conn:
        conn.execute("UPDATE project_snapshots SET last_used_at = now() WHERE id = %s",
                     (snapshot_id,))


def _project_seqs(conn: psycopg.Connection, project_id: UUID) -> _ProjectSeqs:
    row = conn.execute("SELECT last_event_seq, last_file_seq FROM projects WHERE id = %s",
                       (project_id,)).fetchone()
    if row is None:
        raise NotFound(f"project {project_id} not found", project_id=str(project_id))
    return _ProjectSeqs(watermark=row[0], file_seq=row[1])


def _reusable_snapshot(conn: psycopg.Connection, project_id: UUID,
                       file_seq: int) -> SnapshotResult | None:
    row = conn.execute(
        "SELECT id, watermark, file_count, size_bytes, sha256, storage_key, manifest_key"
        " FROM project_snapshots WHERE project_id = %s AND file_seq = %s"
        " ORDER BY created_at DESC LIMIT 1", (project_id, file_seq)).fetchone()
    if row is None:
        return None
    snapshot_id, watermark, files, size, sha256, storage_key, manifest_key = row
    return SnapshotResult(snapshot_id=snapshot_id, project_id=project_id, watermark=watermark,
                          files=files, bytes=size, sha256=sha256, reused=True,
                          storage_key=storage_key, manifest_key=manifest_key, seconds=0.0)


@dataclass(frozen=True)
class _BaseSnapshot:
    """The latest snapshot's zip, open and verified, with its files' hashes and records."""

    file: BinaryIO
    sha256s: dict[str, str]
    records: dict[str, BaseRecord]

    def record_for(self, path: str, sha256: str) -> BaseRecord | None:
        """The base's record of this path if it holds exactly this content."""
        return self.records.get(path) if self.sha256s.get(path) == sha256 else None


def _latest_snapshot(conn: psycopg.Connection, project_id: UUID) -> tuple[str, ...] | None:
    return conn.execute(
        "SELECT id::text, sha256, storage_key, manifest_key FROM project_snapshots"
        " WHERE project_id = %s ORDER BY file_seq DESC, created_at DESC LIMIT 1",
        (project_id,)).fetchone()


def _open_base(stack: contextlib.ExitStack, store: ObjectStore,
               latest: tuple[str, ...] | None) -> _BaseSnapshot | None:
    """The latest snapshot as a base, or None (then every file is read and compressed) if
    there is none or its objects are missing, altered or unreadable."""
    if latest is None:
        return None
    snapshot_id, sha256, zip_key, manifest_key = latest
    try:
        files = json.loads(store.get(manifest_key))["files"]
        stream = stack.enter_context(store.open(zip_key))
        base = _as_seekable_file(stack, stream)
        if _sha256_of(base) != sha256:
            raise CorruptZip("its sha256 differs from the one recorded")
        records = base_records(base)
    except (ObjectNotFound, CorruptZip, ValueError, KeyError, TypeError) as error:
        log.warning("snapshot %s cannot be the base of the next one (%s); "
                    "building from the database alone", snapshot_id, error)
        return None
    return _BaseSnapshot(base, {file["path"]: file["sha256"] for file in files}, records)


def _as_seekable_file(stack: contextlib.ExitStack, stream: Readable) -> BinaryIO:
    """The object itself when it is a local file (the local store), else a local copy."""
    if isinstance(stream, io.BufferedReader) and stream.seekable():
        return stream
    copy = stack.enter_context(tempfile.TemporaryFile())
    copy_stream(stream, copy)
    return copy


def _sha256_of(file: BinaryIO) -> str:
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(BASE_READ_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


_CURRENT_FILES = ("FROM project_files WHERE project_id = %s AND is_current_version"
                  " AND NOT is_deleted ORDER BY file_path")


def _current_file_entries(conn: psycopg.Connection, store: ObjectStore, project_id: UUID,
                          listed: list[dict[str, object]],
                          base: _BaseSnapshot | None) -> Iterator[ArchiveEntry]:
    """Archive entries in path (byte) order, reading content only for files the base lacks.

    Text content streams from a server-side cursor, in the same REPEATABLE READ transaction,
    as the UTF-8 bytes it is stored as (never decoded and encoded again). `listed` collects
    the manifest lines (plain dicts: the manifest validates them at once, far faster than
    one model at a time).
    """
    if base is None:
        return _entries_from_database(conn, store, project_id, listed)
    return _entries_on_base(conn, store, project_id, listed, base)


def _entries_from_database(conn: psycopg.Connection, store: ObjectStore, project_id: UUID,
                           listed: list[dict[str, object]]) -> Iterator[ArchiveEntry]:
    """Every file read whole: metadata and content come from one cursor, so compression
    starts with its first batch instead of after a scan of the metadata."""
    with _content_cursor(conn) as cursor, contextlib.closing(_read_ahead(cursor)) as rows:
        cursor.execute("SELECT file_path, content_hash, size_bytes, storage_key, version,"
                       f" content {_CURRENT_FILES}", (project_id,))
        for raw_path, raw_sha256, size, storage_key, version, content in rows:
            path = raw_path.decode()
            listed.append({"path": path, "sha256": raw_sha256.decode(), "size": size,
                           "version": version})
            if storage_key is not None:
                yield ArchiveEntry(path, size, partial(_object_chunks, store,
                                                       storage_key.decode()))
            else:
                yield ArchiveEntry.from_bytes(path, content)


def _entries_on_base(conn: psycopg.Connection, store: ObjectStore, project_id: UUID,
                     listed: list[dict[str, object]],
                     base: _BaseSnapshot) -> Iterator[ArchiveEntry]:
    """The metadata of every current file is read first (small: no content), then the
    content of the text files the base lacks, in the same order."""
    rows = conn.execute(f"SELECT id, file_path, content_hash, size_bytes, storage_key, version"
                        f" {_CURRENT_FILES}", (project_id,)).fetchall()
    from_base = {row[1]: record for row in rows if (record := base.record_for(row[1], row[2]))}
    changed = [row[0] for row in rows if row[4] is None and row[1] not in from_base]
    # The reader (and its fetching thread) ends before the cursor closes, however we leave.
    with _content_cursor(conn) as cursor, contextlib.closing(_read_ahead(cursor)) as contents:
        cursor.execute("SELECT id, content FROM project_files WHERE id = ANY(%s)"
                       " ORDER BY file_path", (changed,))
        for file_id, path, sha256, size, storage_key, version in rows:
            listed.append({"path": path, "sha256": sha256, "size": size, "version": version})
            if path in from_base:
                yield ArchiveEntry(path, size, _no_content, base=from_base[path])
            elif storage_key is not None:
                yield ArchiveEntry(path, size, partial(_object_chunks, store, storage_key))
            else:
                found_id, content = next(contents)
                assert found_id == file_id, "content rows out of step with metadata"
                yield ArchiveEntry.from_bytes(path, content)


def _content_cursor(conn: psycopg.Connection) -> psycopg.ServerCursor[Any]:
    """A server-side cursor of binary rows whose text columns load as their UTF-8 bytes."""
    cursor = conn.cursor(name=f"snapshot_{uuid.uuid4().hex}", binary=True)
    cursor.adapters.register_loader("text", _RawTextLoader)
    return cursor


def _read_ahead(cursor: psycopg.ServerCursor[Any]) -> Generator[Any, None, None]:
    """The cursor's rows, fetched by a thread up to READ_AHEAD_BATCHES batches ahead.

    Fetching alone, the server would wait while this thread compresses and writes a batch,
    and this thread while the server reads and sends the next one: the build would take the
    sum of both. The cursor is not used by anything else until the rows are consumed.
    """
    batches: queue.Queue[list[Any] | BaseException | None] = queue.Queue(READ_AHEAD_BATCHES)
    stop = threading.Event()

    def fetch() -> None:
        # Once the reader has stopped, nothing more is put: its one drain makes room for the
        # batch in flight, and for nothing after it.
        try:
            while not stop.is_set() and (batch := cursor.fetchmany(CURSOR_BATCH_ROWS)):
                batches.put(batch)
            end: BaseException | None = None
        except BaseException as error:  # noqa: BLE001 - handed to the consuming thread
            end = error
        if not stop.is_set():
            batches.put(end)

    fetcher = threading.Thread(target=fetch, name="snapshot-fetch", daemon=True)
    fetcher.start()
    try:
        while (batch := batches.get()) is not None:
            if isinstance(batch, BaseException):
                raise batch
            yield from batch
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a fetcher waiting for room, so it can see `stop`
                batches.get_nowait()
        fetcher.join()


class _RawTextLoader(Loader):
    """Loads a text column of binary rows as its UTF-8 bytes."""

    format = psycopg.pq.Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def _no_content() -> Iterator[bytes]:
    raise AssertionError("an entry copied from the base zip is never read")


def _object_chunks(store: ObjectStore, key: str) -> Iterator[bytes]:
    with store.open(key) as stream:
        while chunk := stream.read(BINARY_CHUNK_BYTES):
            yield chunk
