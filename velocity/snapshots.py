"""Snapshot building: a project's current files as a deterministic zip, with its watermark.

One REPEATABLE READ transaction reads the project's event seq (the watermark) and streams its
current files from a server-side cursor into the zip, so every event up to the watermark is
in the zip and none after it. The zip is spooled to a temporary file (memory stays bounded
whatever the project's size) and uploaded with its manifest; then a `project_snapshots` row
and a `snapshot:ready` event are recorded together. When no file changed since the last
snapshot, that one is returned and nothing is built or uploaded.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlencode
from uuid import UUID

import psycopg
from pydantic import BaseModel

from velocity.archive import (
    ArchiveEntry,
    Manifest,
    ManifestFile,
    snapshot_manifest_key,
    write_snapshot_zip,
)
from velocity.db import Database
from velocity.errors import NotFound
from velocity.storage import ObjectStore

SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
CURSOR_BATCH_ROWS = 200
BINARY_CHUNK_BYTES = 1024 * 1024


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

    `force` builds a new zip even if the last one matches, e.g. when its object was lost.
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
    with db.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        seqs = _project_seqs(conn, project_id)
        snapshot_id = uuid.uuid4()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            listed: list[ManifestFile] = []
            entries = _current_file_entries(conn, store, project_id, listed)
            digest = write_snapshot_zip(entries, spool, presorted=True)
            spool.seek(0)
            manifest = Manifest(project_id=project_id, snapshot_id=snapshot_id,
                                watermark=seqs.watermark, sha256=digest.sha256,
                                size=digest.size, files=listed)
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


def _current_file_entries(conn: psycopg.Connection, store: ObjectStore, project_id: UUID,
                          listed: list[ManifestFile]) -> Iterator[ArchiveEntry]:
    """Archive entries straight from a server-side cursor, in path (byte) order.

    Each entry's content is only the current row's; `listed` collects the manifest lines.
    """
    with conn.cursor(name=f"snapshot_{uuid.uuid4().hex}") as cursor:
        cursor.itersize = CURSOR_BATCH_ROWS
        cursor.execute(
            "SELECT file_path, content, content_hash, size_bytes,"
            " storage_key, version FROM project_files"
            " WHERE project_id = %s AND is_current_version AND NOT is_deleted"
            " ORDER BY file_path", (project_id,))
        for path, content, sha256, size, storage_key, version in cursor:
            listed.append(ManifestFile(path=path, sha256=sha256, size=size, version=version))
            if storage_key is None:
                yield ArchiveEntry.from_bytes(path, content.encode())
            else:
                yield ArchiveEntry(path, size, partial(_object_chunks, store, storage_key))


def _object_chunks(store: ObjectStore, key: str) -> Iterator[bytes]:
    with store.open(key) as stream:
        while chunk := stream.read(BINARY_CHUNK_BYTES):
            yield chunk
