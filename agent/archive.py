"""Safe snapshot extraction: verify, unpack into staging, swap in atomically (stdlib only)."""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from agent.paths import UnsafePath, split_relative_path

MAX_FILES = 100_000
MAX_BYTES = 2 * 1024**3
MAX_RATIO = 200.0
# Below this many bytes an entry's ratio is not judged: a tiny file of repeated characters
# compresses absurdly well and harms no one, and max_bytes bounds many of them together.
RATIO_FLOOR_BYTES = 1024 * 1024
CHUNK_SIZE = 1024 * 1024
STAGING_MARK = ".staging-"
ASIDE_MARK = ".old-"


class ArchiveRejected(Exception):
    """A snapshot that will not be extracted; `entry` is the offending member (or the zip)."""

    def __init__(self, entry: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{entry!r} rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.entry = entry
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Extracted:
    """What hydration put on disk, for the agent's status report."""

    files: int
    bytes: int


@dataclass(frozen=True)
class _Limits:
    max_files: int
    max_bytes: int
    max_ratio: float


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a download that is not the zip the manifest describes (truncated, swapped)."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ArchiveRejected(path.name, "sha256_mismatch", f"expected {expected}, got {actual}")


def extract_snapshot(
    zip_path: Path,
    target_dir: Path,
    expected_sha256: str,
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
    max_ratio: float = MAX_RATIO,
) -> Extracted:
    """Replace `target_dir` with the zip's files, or raise ArchiveRejected and change nothing.

    Files are unpacked into a staging directory beside the target (same filesystem, so the
    final rename is atomic); the staging directory is removed on any failure. The target
    must not be a mount point: mount its parent instead, or the rename fails with EBUSY.
    """
    zip_path, target = Path(zip_path), Path(target_dir)
    verify_sha256(zip_path, expected_sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        result = _extract_into(zip_path, staging, _Limits(max_files, max_bytes, max_ratio))
        swap_into_place(staging, target)
    except BaseException:
        _remove(staging)
        raise
    return result


def _extract_into(zip_path: Path, staging: Path, limits: _Limits) -> Extracted:
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveRejected(zip_path.name, "corrupt", str(error)) from None
    with archive:
        members = _plan(archive.infolist(), limits)
        written = 0
        for member in members:
            destination = staging.joinpath(*member.parts)
            if member.is_dir:
                destination.mkdir(parents=True, exist_ok=True)
                continue
            written += _extract_file(archive, member.info, destination, limits, written)
    return Extracted(files=sum(not member.is_dir for member in members), bytes=written)


def _plan(infos: list[zipfile.ZipInfo], limits: _Limits) -> list[_Member]:
    """Check every entry's name, type and declared sizes before a byte is written."""
    if len(infos) > limits.max_files:
        raise ArchiveRejected(
            infos[limits.max_files].filename, "too_many_files", f"limit {limits.max_files}"
        )
    members: list[_Member] = []
    seen: set[tuple[str, ...]] = set()
    declared = 0
    for info in infos:
        member = _Member(info, _entry_parts(info), _is_directory(info))
        if member.parts in seen:
            raise ArchiveRejected(info.filename, "duplicate_entry")
        seen.add(member.parts)
        _check_encoding(info)
        declared += info.file_size
        if declared > limits.max_bytes:
            raise ArchiveRejected(info.filename, "too_many_bytes", f"limit {limits.max_bytes}")
        if _ratio_exceeded(info.file_size, info.compress_size, limits.max_ratio):
            raise ArchiveRejected(info.filename, "ratio_exceeded", f"limit {limits.max_ratio}")
        members.append(member)
    _check_no_file_is_a_parent(members)
    return members


def _entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path segments, if it names a plain relative location (see paths.py)."""
    name = info.filename
    if "\x00" in info.orig_filename or not name:
        raise ArchiveRejected(info.orig_filename, "invalid_path", "empty or contains NUL")
    relative = name[:-1] if name.endswith("/") and len(name) > 1 else name
    try:
        return split_relative_path(relative)
    except UnsafePath as error:
        raise ArchiveRejected(name, error.reason, error.detail) from None


def _is_directory(info: zipfile.ZipInfo) -> bool:
    """Whether the entry is a directory; refuse links, devices and contradictory entries.

    The Unix file type lives in the high 16 bits of external_attr; zero means the archiver
    recorded none (DOS, some tools), and the trailing slash decides.
    """
    name_is_dir = info.filename.endswith("/")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise ArchiveRejected(info.filename, "symlink")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveRejected(info.filename, "special_file", f"file type {oct(kind)}")
    if (kind == stat.S_IFREG and name_is_dir) or (kind == stat.S_IFDIR and not name_is_dir):
        raise ArchiveRejected(info.filename, "type_mismatch", "file type contradicts the name")
    if name_is_dir and info.file_size:
        raise ArchiveRejected(info.filename, "type_mismatch", "directory with content")
    return name_is_dir


def _check_encoding(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise ArchiveRejected(info.filename, "encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArchiveRejected(
            info.filename, "unsupported_compression", f"method {info.compress_type}"
        )


def _check_no_file_is_a_parent(members: Iterable[_Member]) -> None:
    """Refuse `a` as a file beside `a/b`: one of them would silently win on disk."""
    files = {member.parts: member for member in members if not member.is_dir}
    for member in members:
        for depth in range(1, len(member.parts)):
            parent = files.get(member.parts[:depth])
            if parent is not None:
                raise ArchiveRejected(
                    member.info.filename, "path_conflict", f"{parent.info.filename!r} is a file"
                )


def _ratio_exceeded(uncompressed: int, compressed: int, max_ratio: float) -> bool:
    return uncompressed > RATIO_FLOOR_BYTES and uncompressed > max_ratio * max(compressed, 1)


def _extract_file(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    destination: Path,
    limits: _Limits,
    written_before: int,
) -> int:
    """Copy one entry, counting the bytes actually inflated rather than trusting headers."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    written = 0
    try:
        with (
            archive.open(info) as source,
            os.fdopen(os.open(destination, flags, 0o644), "wb") as out,
        ):
            while chunk := source.read(CHUNK_SIZE):
                written += len(chunk)
                if written_before + written > limits.max_bytes:
                    raise ArchiveRejected(
                        info.filename, "too_many_bytes", f"limit {limits.max_bytes}"
                    )
                if _ratio_exceeded(written, info.compress_size, limits.max_ratio):
                    raise ArchiveRejected(
                        info.filename, "ratio_exceeded", f"limit {limits.max_ratio}"
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ArchiveRejected(info.filename, "corrupt", str(error)) from None
    return written


def swap_into_place(staging: Path, target: Path) -> None:
    """Make `staging` the target directory and delete the previous one.

    With renameat2(RENAME_EXCHANGE) (Linux, most local filesystems) the target path always
    names a complete tree. Elsewhere two renames are used, and for the instant between them
    the target path does not exist; readers then see ENOENT, never a partial tree.
    """
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if _rename_exchange(staging, target):
        _remove(staging)
    else:
        _swap_by_two_renames(staging, target)


def _swap_by_two_renames(staging: Path, target: Path) -> None:
    """Set the target aside, move staging in, then delete the old tree; undo on failure."""
    aside = target.with_name(f".{target.name}{ASIDE_MARK}{uuid.uuid4().hex}")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _remove(aside)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@lru_cache(maxsize=1)
def _renameat2() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def _rename_exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step; False when the C library or filesystem cannot."""
    function = _renameat2()
    if function is None:
        return False
    result = function(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _remove_leftovers(target: Path) -> None:
    """Delete staging and set-aside trees that a killed earlier run left beside the target."""
    for marker in (STAGING_MARK, ASIDE_MARK):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}{marker}*"):
            _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
