"""Deterministic snapshot zips and their manifest: equal files give byte-identical zips."""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, Protocol
from uuid import UUID

import deflate as libdeflate
from pydantic import BaseModel, ConfigDict, Field, field_validator

from velocity.zipformat import (
    DATA_DESCRIPTOR,
    ZIP64_LIMIT,
    CorruptZip,
    ZipRecord,
    central_entry,
    data_descriptor,
    dos_date_time,
    encode_name,
    end_records,
    local_header,
    read_records,
)

FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # a regular file, rw-r--r--
# Whole entries are deflated by libdeflate (the `deflate` package) in one call. At level 1 it
# compresses the bench's source text at ~140 MB/s on the 2-core development machine, 2.3x
# zlib's speed, into a zip 7 % smaller; its output depends on the input and the library's
# version alone. (ISA-L was 40 % faster but not deterministic: on AVX-512 machines it now and
# then chose other matches for the same input when its thread was preempted.) Entries too
# large to hold whole stream through zlib, the only deterministic streaming deflate here.
COMPRESS_LEVEL = 1
WHOLE_ENTRY_LIMIT = 8 * 1024 * 1024
UNIX = 3  # "version made by" host system: lets readers trust the mode bits
COMPRESS_THREADS = max(1, min(4, os.cpu_count() or 1))
# Content being compressed ahead of the writer, at most: bounds a build's memory.
COMPRESS_AHEAD_BYTES = 32 * 1024 * 1024
# Small files are compressed in batches: a thread hand-off per file would cost more than
# compressing it. An entry counts as at least COMPRESS_ENTRY_COST bytes.
COMPRESS_BATCH_BYTES = 512 * 1024
COMPRESS_ENTRY_COST = 512
SINK_BUFFER_BYTES = 1024 * 1024


class Writable(Protocol):
    """Where a zip is written: a file, a pipe, a socket; it is never seeked."""

    def write(self, data: bytes | bytearray, /) -> int | None: ...


class ArchiveEntry(NamedTuple):  # a tuple: built ten thousand times per snapshot
    """One file of a snapshot; `chunks` is called only when the file is written.

    Keeping content behind a callable lets a caller describe ten thousand files without
    holding any of them in memory. An entry with a `base` record is copied verbatim from the
    base zip given to the writer instead (its content is known to be unchanged).
    """

    path: str
    size: int
    chunks: Callable[[], Iterable[bytes]]
    base: BaseRecord | None = None

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> ArchiveEntry:
        return cls(path, len(data), lambda: (data,))


class BaseRecord(NamedTuple):
    """Where an entry's whole local record lies in a base zip."""

    record: ZipRecord
    length: int


@dataclass(frozen=True)
class Deflated:
    """An entry's raw deflate stream at COMPRESS_LEVEL, with the facts a zip header needs."""

    crc: int
    size: int
    data: bytes


def deflate(chunks: Iterable[bytes]) -> Deflated:
    """Compress a whole entry as every snapshot compresses it (raw deflate, fixed level)."""
    data = b"".join(chunks)  # one bytes part is returned as it is, not copied
    return Deflated(libdeflate.crc32(data), len(data), deflate_whole(data))


def deflate_whole(data: bytes) -> bytes:
    """A whole entry's raw deflate stream (no zlib header) at COMPRESS_LEVEL."""
    return bytes(libdeflate.deflate_compress(data, COMPRESS_LEVEL))


def _streaming_compressor() -> Any:
    """A raw deflate stream at COMPRESS_LEVEL, for entries compressed as they are read."""
    return zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)


@dataclass(frozen=True)
class ZipDigest:
    """The identity of a written zip, as the manifest and the agent check it."""

    sha256: str
    size: int


class _HashingSink:
    """Hashes and counts every byte on its way out, so the hash needs no second pass."""

    def __init__(self, out: Writable) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= SINK_BUFFER_BYTES:
            self._flush()

    def digest(self) -> ZipDigest:
        self._flush()
        return ZipDigest(self._hash.hexdigest(), self.size)

    def _flush(self) -> None:
        # Hashing and writing release the GIL: a few large calls, not one per record, or
        # the writer waits for the GIL behind the compression threads thousands of times.
        self._hash.update(self._buffer)
        self._out.write(self._buffer)
        self._buffer = bytearray()


def write_snapshot_zip(entries: Iterable[ArchiveEntry], out: Writable, *,
                       presorted: bool = False, base: BinaryIO | None = None) -> ZipDigest:
    """Write `entries` as a deterministic zip to `out`; returns its sha256 and size.

    Entries are sorted by path (code-point order, which is also UTF-8 byte order and
    PostgreSQL's `COLLATE "C"`), so the caller's order never changes the bytes. Every entry
    has the same timestamp, mode, compression and level, and no variable extra fields; the
    records are the ones zipfile writes (velocity.zipformat). Entries up to WHOLE_ENTRY_LIMIT
    are compressed whole, on every core; larger ones stream with a data descriptor. Entries
    with a `base` record are copied from `base`, the zip they came from: the same bytes as
    compressing them again, at the cost of a copy. The output is never seeked.

    With `presorted`, entries are consumed as they come (a database cursor, say) and must
    already be in strictly increasing path order; memory stays bounded by the compression
    window, not by the project.
    """
    ordered = _checked_in_order(entries) if presorted else iter(_sorted_unique(entries))
    writer = _ZipWriter(_HashingSink(out), base)
    for entry, deflated in _deflated_ahead(ordered):
        writer.add(entry, deflated)
    return writer.finish()


def _sorted_unique(entries: Iterable[ArchiveEntry]) -> list[ArchiveEntry]:
    ordered = sorted(entries, key=lambda entry: entry.path)
    for previous, entry in zip(ordered, ordered[1:], strict=False):
        if previous.path == entry.path:
            raise ValueError(f"duplicate path in snapshot: {entry.path!r}")
    for entry in ordered:
        check_entry_path(entry.path)
        if entry.size < 0:
            raise ValueError(f"negative size for {entry.path!r}")
    return ordered


def _checked_in_order(entries: Iterable[ArchiveEntry]) -> Iterator[ArchiveEntry]:
    previous: str | None = None
    for entry in entries:
        if previous is not None and entry.path <= previous:
            raise ValueError(f"presorted entries out of order: {entry.path!r} after {previous!r}")
        if entry.base is None:  # a base record's path was checked when its zip was written
            check_entry_path(entry.path)
        if entry.size < 0:
            raise ValueError(f"negative size for {entry.path!r}")
        previous = entry.path
        yield entry


# Compiled once: this runs for every file of every snapshot.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_EMPTY_OR_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.{0,2})(?:/|$)")


def check_entry_path(path: str) -> None:
    """Refuse to write a path that the agent would refuse to extract."""
    if not path or path.startswith("/") or "\\" in path:
        raise ValueError(f"snapshot path {path!r} must be relative, with forward slashes")
    if _CONTROL_CHARACTER.search(path):
        raise ValueError(f"snapshot path {path!r} contains a control character")
    if _EMPTY_OR_DOT_SEGMENT.search(path):
        raise ValueError(f"snapshot path {path!r} has an empty, '.' or '..' segment")


def _deflated_ahead(entries: Iterator[ArchiveEntry]
                    ) -> Iterator[tuple[ArchiveEntry, Deflated | None]]:
    """Entries in order, each whole entry with its deflate stream, compressed ahead on
    threads (libdeflate releases the GIL) in batches of about COMPRESS_BATCH_BYTES, at most
    COMPRESS_AHEAD_BYTES of content in flight. Copied and streamed entries get None."""
    window: deque[tuple[list[ArchiveEntry], Future[list[Deflated]] | None]] = deque()
    batch: list[ArchiveEntry] = []
    batch_bytes = in_flight = 0
    with ThreadPoolExecutor(max_workers=COMPRESS_THREADS,
                            thread_name_prefix="snapshot-deflate") as pool:

        def submit_batch() -> None:
            nonlocal batch, batch_bytes
            if batch:
                window.append((batch, pool.submit(_deflate_batch, batch)))
                batch, batch_bytes = [], 0

        for entry in entries:
            if entry.base is not None or entry.size > WHOLE_ENTRY_LIMIT:
                submit_batch()
                window.append(([entry], None))
            else:
                batch.append(entry)
                batch_bytes += entry.size + COMPRESS_ENTRY_COST
                in_flight += entry.size + COMPRESS_ENTRY_COST
                if batch_bytes >= COMPRESS_BATCH_BYTES:
                    submit_batch()
            while window and (in_flight > COMPRESS_AHEAD_BYTES or window[0][1] is None):
                done, future = window.popleft()
                if future is None:
                    yield done[0], None
                    continue
                for item, deflated in zip(done, future.result(), strict=True):
                    in_flight -= item.size + COMPRESS_ENTRY_COST
                    yield item, deflated
        submit_batch()
        while window:
            done, future = window.popleft()
            results = future.result() if future is not None else [None]
            yield from zip(done, results, strict=True)


def _deflate_batch(batch: list[ArchiveEntry]) -> list[Deflated]:
    return [_deflate_entry(entry) for entry in batch]


def _deflate_entry(entry: ArchiveEntry) -> Deflated:
    deflated = deflate(entry.chunks())
    if deflated.size != entry.size:
        raise ValueError(f"{entry.path!r}: declared {entry.size} bytes, content had "
                         f"{deflated.size}")
    return deflated


_DATE, _TIME = dos_date_time(FIXED_DATE_TIME)
_EXTERNAL_ATTR = FILE_MODE << 16
COPY_CHUNK_BYTES = 1024 * 1024


class _ZipWriter:
    """Writes local records in order, coalescing copies of adjacent base records into one
    read, then the central directory and end records."""

    def __init__(self, sink: _HashingSink, base: BinaryIO | None) -> None:
        self._sink = sink
        self._base = base
        self._central: list[bytes] = []
        self._offset = 0  # where the next record starts, pending copies included
        self._copy_from = self._copy_to = 0

    def add(self, entry: ArchiveEntry, deflated: Deflated | None) -> None:
        if entry.base is not None:
            self._copy(entry.base)
        elif deflated is not None:
            self._flush_copy()
            self._write_whole(entry.path, deflated)
        else:
            self._flush_copy()
            self._write_streamed(entry)

    def finish(self) -> ZipDigest:
        self._flush_copy()
        directory = b"".join(self._central)
        self._sink.write(directory)
        self._sink.write(end_records(len(self._central), self._offset, len(directory)))
        return self._sink.digest()

    def _record(self, record: ZipRecord, length: int) -> None:
        """Note a record written (or about to be copied) at the current offset."""
        self._central.append(central_entry(record, self._offset, _DATE, _TIME, UNIX,
                                           _EXTERNAL_ATTR))
        self._offset += length

    def _write_whole(self, path: str, deflated: Deflated) -> None:
        name, flags = encode_name(path)
        record = ZipRecord(name, flags, deflated.crc, len(deflated.data), deflated.size)
        zip64 = max(record.size, record.compressed_size) > ZIP64_LIMIT
        header = local_header(record, _DATE, _TIME, zip64=zip64)
        self._sink.write(header)
        self._sink.write(deflated.data)
        self._record(record, len(header) + len(deflated.data))

    def _write_streamed(self, entry: ArchiveEntry) -> None:
        """A large entry (a big binary) is compressed as it streams; its CRC and sizes
        follow in a data descriptor. zip64 is chosen from the declared size, as zipfile does."""
        name, flags = encode_name(entry.path)
        flags |= DATA_DESCRIPTOR
        zip64 = entry.size * 1.05 > ZIP64_LIMIT
        header = local_header(ZipRecord(name, flags, 0, 0, 0), _DATE, _TIME, zip64=zip64)
        self._sink.write(header)
        compressor = _streaming_compressor()
        crc = size = compressed = 0
        for chunk in entry.chunks():
            crc = libdeflate.crc32(chunk, crc)
            size += len(chunk)
            data = compressor.compress(chunk)
            compressed += len(data)
            self._sink.write(data)
        data = compressor.flush()
        compressed += len(data)
        self._sink.write(data)
        if size != entry.size:
            raise ValueError(f"{entry.path!r}: declared {entry.size} bytes, content had {size}")
        if not zip64 and max(size, compressed) > ZIP64_LIMIT:
            raise ValueError(f"{entry.path!r}: larger than its declared size allows")
        record = ZipRecord(name, flags, crc, compressed, size)
        descriptor = data_descriptor(record, zip64=zip64)
        self._sink.write(descriptor)
        self._record(record, len(header) + compressed + len(descriptor))

    def _copy(self, base: BaseRecord) -> None:
        if self._base is None:
            raise ValueError("an entry has a base record but no base zip was given")
        if base.record.offset != self._copy_to:
            self._flush_copy()
            self._copy_from = self._copy_to = base.record.offset
        self._copy_to += base.length
        self._record(base.record, base.length)

    def _flush_copy(self) -> None:
        if self._copy_to == self._copy_from or self._base is None:
            return
        self._base.seek(self._copy_from)
        remaining = self._copy_to - self._copy_from
        while remaining:
            chunk = self._base.read(min(remaining, COPY_CHUNK_BYTES))
            if not chunk:
                raise CorruptZip("the base zip ended inside a record")
            self._sink.write(chunk)
            remaining -= len(chunk)
        self._copy_from = self._copy_to


def base_records(base: BinaryIO) -> dict[str, BaseRecord]:
    """The local records of a zip this module wrote, by path, with their lengths."""
    records, directory_offset = read_records(base)
    ends = [record.offset for record in records[1:]] + [directory_offset]
    return {record.name.decode("utf-8"): BaseRecord(record, end - record.offset)
            for record, end in zip(records, ends, strict=True)}


_SHA256 = r"^[0-9a-f]{64}$"


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)
    version: int = Field(ge=1)


class Manifest(BaseModel):
    """What a snapshot contains, stored beside its zip; the agent checks the zip against it."""

    model_config = ConfigDict(frozen=True)

    project_id: UUID
    snapshot_id: UUID
    watermark: int = Field(ge=0, description="The project's event seq the files reflect.")
    sha256: str = Field(pattern=_SHA256, description="Of the zip.")
    size: int = Field(ge=0, description="Of the zip, in bytes.")
    files: list[ManifestFile]

    @field_validator("files")
    @classmethod
    def _sorted_by_path(cls, files: list[ManifestFile]) -> list[ManifestFile]:
        """In zip order, so equal snapshots have equal manifests."""
        paths = [file.path for file in files]
        if any(a >= b for a, b in zip(paths, paths[1:], strict=False)):
            raise ValueError("files must be sorted by path, without duplicates")
        return files

    @property
    def zip_key(self) -> str:
        return snapshot_zip_key(self.project_id, self.snapshot_id)

    @property
    def manifest_key(self) -> str:
        return snapshot_manifest_key(self.project_id, self.snapshot_id)

    def dump_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def load_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)


def snapshot_zip_key(project_id: UUID, snapshot_id: UUID) -> str:
    return f"project-snapshots/{project_id}/{snapshot_id}.zip"


def snapshot_manifest_key(project_id: UUID, snapshot_id: UUID) -> str:
    return f"project-snapshots/{project_id}/{snapshot_id}.json"
