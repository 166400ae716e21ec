"""Applies file events to PROJECT_DIR: checked paths, atomic writes, idempotent skips.

Every path from the wire is split by `split_relative_path` and then walked one directory at a
time with O_NOFOLLOW directory descriptors, so no symlink (planted or raced in) is ever
followed and nothing outside the project can be reached. A write goes to a temp file in the
target's directory and is renamed over the target: readers see the old or the new file,
never a partial one. A write whose on-disk sha256 already equals `content_hash` is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.paths import UnsafePath, split_relative_path
from agent.snapshot import public_url

TEMP_PREFIX = ".velocity-tmp-"
MAX_BINARY_BYTES = 512 * 1024**2
DOWNLOAD_ATTEMPTS = 3
SMALL_FILE_BYTES = 1024 * 1024
# Staged writes keep their directory open until renamed, up to this many; later ones reopen
# it, so a bulk write of any size never runs out of file descriptors.
KEEP_OPEN_DIRS = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SHA256 = re.compile(r"[0-9a-f]{64}")

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass
class ApplyOutcome:
    """What one event did on disk."""

    written: int = 0
    skipped: int = 0
    deleted: int = 0
    refused: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


class ApplyFailed(Exception):
    """A well-formed event that could not be applied (disk error, failed download, a binary
    without a link): the project is no longer known to match, re-hydration repairs it."""


@dataclass(frozen=True)
class _Item:
    action: str
    path: str
    parts: tuple[str, ...]
    payload: Mapping[str, Any]


@dataclass
class _Staged:
    item: _Item
    temp: str
    dir_fd: int | None
    committed: bool = field(default=False)


class ProjectWriter:
    """Applies `file:update`, `file:delete` and `bulk:apply` payloads under one root."""

    def __init__(
        self,
        root: Path,
        client: httpx.AsyncClient | None = None,
        log: Log | None = None,
        max_binary_bytes: int = MAX_BINARY_BYTES,
    ) -> None:
        self.root = Path(root)
        self._client = client
        self._log: Log = log or logging.getLogger(__name__)
        self._max_binary_bytes = max_binary_bytes

    async def apply(self, kind: str, payload: Mapping[str, Any]) -> ApplyOutcome:
        """Apply one event's payload; `snapshot:ready` and unknown kinds change nothing."""
        if kind == "file:update":
            return await self.apply_items([{**payload, "action": "update"}])
        if kind == "file:delete":
            return await self.apply_items([{**payload, "action": "delete"}])
        if kind == "bulk:apply":
            files = payload.get("files")
            if not isinstance(files, list):
                self._log.warning("bulk:apply without a files list: ignored")
                return ApplyOutcome(refused=1)
            return await self.apply_items(files)
        return ApplyOutcome()

    async def apply_items(self, items: Sequence[object]) -> ApplyOutcome:
        """Apply items as one unit: stage every write, then delete, then rename every write."""
        outcome = ApplyOutcome()
        plan = self._plan(items, outcome)
        deleted = {item.path for item in plan if item.action == "delete"}
        # A file the unit deletes may be a directory of a write in it (`a` deleted, `a/b`
        # written): such writes are staged once the deletes have made room for the directory.
        after_deletes = [item for item in plan if item.action == "update"
                         and any("/".join(item.parts[:n]) in deleted
                                 for n in range(1, len(item.parts)))] if deleted else []
        waiting = {item.path for item in after_deletes}
        staged: list[_Staged] = []
        try:
            for item in plan:
                if item.action == "update" and item.path not in waiting:
                    await self._stage_update(item, staged, outcome)
            for item in plan:
                if item.action == "delete":
                    self._delete(item, outcome)
            for item in after_deletes:
                await self._stage_update(item, staged, outcome)
            for entry in staged:
                self._commit(entry)
                outcome.written += 1
        except OSError as error:
            raise ApplyFailed(f"{type(error).__name__}: {error}") from error
        finally:
            for entry in staged:
                self._discard(entry)
        return outcome

    def _plan(self, items: Sequence[object], outcome: ApplyOutcome) -> list[_Item]:
        """Checked items, one per path (the last action for a path is its final state)."""
        plan: dict[str, _Item] = {}
        for raw in items:
            if not isinstance(raw, Mapping) or raw.get("action") not in ("update", "delete"):
                self._refuse(outcome, raw, "malformed_item")
                continue
            path = raw.get("file_path")
            try:
                parts = split_relative_path(path)
            except UnsafePath as error:
                self._refuse(outcome, path, error.reason)
                continue
            assert isinstance(path, str)
            plan.pop(path, None)
            plan[path] = _Item(raw["action"], path, parts, raw)
        return list(plan.values())

    async def _stage_update(
        self, item: _Item, staged: list[_Staged], outcome: ApplyOutcome
    ) -> None:
        try:
            dir_fd = self._open_parent(item, create=True)
        except UnsafePath as error:
            self._refuse(outcome, item.path, error.reason)
            return
        try:
            temp = await self._write_or_skip(item, dir_fd)
        except UnsafePath as error:
            os.close(dir_fd)
            self._refuse(outcome, item.path, error.reason)
            return
        except BaseException:
            os.close(dir_fd)
            raise
        if temp is None:
            os.close(dir_fd)
            outcome.skipped += 1
            return
        keep = len(staged) < KEEP_OPEN_DIRS  # the first ones keep theirs open
        if not keep:
            os.close(dir_fd)
        staged.append(_Staged(item, temp, dir_fd if keep else None))

    async def _write_or_skip(self, item: _Item, dir_fd: int) -> str | None:
        """The staged temp file's name, or None when the file on disk is already right."""
        name, payload = item.parts[-1], item.payload
        existing = _lstat(name, dir_fd)
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise UnsafePath(item.path, "symlink")
        regular = existing is not None and stat.S_ISREG(existing.st_mode)
        content = payload.get("content")
        if isinstance(content, str):
            data = content.encode("utf-8", "surrogatepass")
            if regular and existing is not None and existing.st_size == len(data):
                expected = payload.get("content_hash") or hashlib.sha256(data).hexdigest()
                if _sha256_at(name, dir_fd, existing.st_size) == expected:
                    return None
            return _write_temp(dir_fd, data)
        url, expected = payload.get("download_url"), payload.get("content_hash")
        if not isinstance(url, str) or not isinstance(expected, str):
            raise ApplyFailed(f"{item.path!r}: an update with neither content nor download_url")
        if not _SHA256.fullmatch(expected):
            raise ApplyFailed(f"{item.path!r}: content_hash is not a lowercase sha256")
        size = payload.get("size")
        if (
            regular
            and existing is not None
            and (not isinstance(size, int) or existing.st_size == size)
        ):
            if _sha256_at(name, dir_fd, existing.st_size) == expected:
                return None
        return await self._download_temp(dir_fd, item.path, url, expected)

    async def _download_temp(self, dir_fd: int, path: str, url: str, expected: str) -> str:
        if self._client is None:
            raise ApplyFailed(f"{path!r}: no HTTP client for binary downloads")
        problem = ""
        for attempt in range(DOWNLOAD_ATTEMPTS):
            temp = _new_temp_name()
            out = os.open(temp, _NEW_FLAGS, 0o644, dir_fd=dir_fd)
            try:
                digest = await self._stream_into(out, url)
            except _Transient as error:
                problem = str(error)
            except BaseException:
                _unlink_quietly(temp, dir_fd)
                raise
            else:
                if digest == expected:
                    return temp
                problem = f"sha256 mismatch: expected {expected}, got {digest}"
            _unlink_quietly(temp, dir_fd)
            self._log.warning(
                "download of %r from %s failed (attempt %d): %s",
                path,
                public_url(url),
                attempt + 1,
                problem,
            )
            await asyncio.sleep(0.2 * 2**attempt)
        raise ApplyFailed(f"{path!r}: download failed: {problem}")

    async def _stream_into(self, out: int, url: str) -> str:
        """Stream `url` into the open descriptor `out` (closed here); return its sha256."""
        assert self._client is not None
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(out, "wb") as handle:
            try:
                async with self._client.stream("GET", url) as response:
                    if response.status_code >= 500:
                        raise _Transient(f"HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise ApplyFailed(f"download refused: HTTP {response.status_code}")
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > self._max_binary_bytes:
                            raise ApplyFailed(f"download over {self._max_binary_bytes} bytes")
                        digest.update(chunk)
                        handle.write(chunk)
            except httpx.TransportError as error:
                raise _Transient(f"{type(error).__name__}: {error}") from None
        return digest.hexdigest()

    def _delete(self, item: _Item, outcome: ApplyOutcome) -> None:
        """Remove the file, then every directory it leaves empty (never the root)."""
        parents, name = item.parts[:-1], item.parts[-1]
        try:
            chain = self._open_chain(item, parents, create=False)
        except FileNotFoundError:
            outcome.skipped += 1
            return
        except UnsafePath as error:
            self._refuse(outcome, item.path, error.reason)
            return
        try:
            existing = _lstat(name, chain[-1])
            if existing is None:
                outcome.skipped += 1
                return
            if stat.S_ISLNK(existing.st_mode):
                self._refuse(outcome, item.path, "symlink")
                return
            if stat.S_ISDIR(existing.st_mode):
                self._refuse(outcome, item.path, "is_a_directory")
                return
            os.unlink(name, dir_fd=chain[-1])
            outcome.deleted += 1
            for depth in range(len(parents), 0, -1):
                try:
                    os.rmdir(parents[depth - 1], dir_fd=chain[depth - 1])
                except OSError:
                    break
        finally:
            for fd in chain:
                os.close(fd)

    def _commit(self, entry: _Staged) -> None:
        dir_fd = entry.dir_fd
        if dir_fd is None:
            dir_fd = self._open_parent(entry.item, create=False)
        try:
            os.rename(entry.temp, entry.item.parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            entry.committed = True
        finally:
            if entry.dir_fd is None:
                os.close(dir_fd)

    def _open_parent(self, item: _Item, create: bool) -> int:
        """A descriptor of the item's directory, reached without following any symlink."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for name in item.parts[:-1]:
                child = _open_child(fd, name, create, item.path)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_chain(self, item: _Item, parents: tuple[str, ...], create: bool) -> list[int]:
        chain = [os.open(self.root, _DIR_FLAGS)]
        try:
            for name in parents:
                chain.append(_open_child(chain[-1], name, create, item.path))
        except BaseException:
            for fd in chain:
                os.close(fd)
            raise
        return chain

    def _discard(self, entry: _Staged) -> None:
        """Close what a staged write holds and remove its temp file unless it was renamed."""
        dir_fd = entry.dir_fd
        if not entry.committed and dir_fd is None:
            try:
                dir_fd = self._open_parent(entry.item, create=False)
            except (OSError, UnsafePath):
                return
        if dir_fd is None:
            return
        if not entry.committed:
            _unlink_quietly(entry.temp, dir_fd)
        os.close(dir_fd)
        entry.dir_fd = None

    def _refuse(self, outcome: ApplyOutcome, path: object, reason: str) -> None:
        outcome.refused += 1
        self._log.warning("refused path %.200r: %s", path, reason)


class _Transient(Exception):
    """A download failure worth another attempt."""


def _open_child(parent_fd: int, name: str, create: bool, path: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except NotADirectoryError:
        raise UnsafePath(path, "not_a_directory", name) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafePath(path, "symlink", name) from None
        raise
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    return _open_child(parent_fd, name, False, path)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _sha256_at(name: str, dir_fd: int, size: int) -> str:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    if size <= SMALL_FILE_BYTES:  # one read, no 256 KiB buffer per call
        try:
            return hashlib.sha256(os.read(fd, size + 1)).hexdigest()
        finally:
            os.close(fd)
    with os.fdopen(fd, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _new_temp_name() -> str:
    return TEMP_PREFIX + secrets.token_hex(8)


def _write_temp(dir_fd: int, data: bytes) -> str:
    temp = _new_temp_name()
    out = os.open(temp, _NEW_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
    except BaseException:
        os.close(out)
        _unlink_quietly(temp, dir_fd)
        raise
    os.close(out)
    return temp


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
