"""Hydration: download the snapshot zip (streamed, size-bounded, retried), verify its sha256,
extract it safely and swap it in for PROJECT_DIR."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import tempfile
from pathlib import Path

import httpx

from agent.archive import (
    MAX_BYTES,
    ArchiveRejected,
    Extracted,
    extract_snapshot,
    verify_sha256,
)
from agent.backoff import DOWNLOAD_BACKOFF, Backoff, BackoffPolicy
from agent.logs import quiet_url_loggers
from agent.snapshot import SnapshotRef, public_url

DOWNLOAD_MARK = ".download-"
# Kept across a re-hydration: installed dependencies are not in the snapshot and are slow
# to install again.
CARRIED_OVER = ("node_modules",)
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class SnapshotUnavailable(Exception):
    """The URL answered 4xx (403 expired/bad signature, 404 gone): ask for a fresh one."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"snapshot download refused: HTTP {status} from {public_url(url)}")
        self.status = status


class SnapshotTooLarge(Exception):
    """The download exceeds the configured size bound."""


class DownloadFailed(Exception):
    """Every attempt failed on a connection error, a 5xx or a truncated body."""


class _Retryable(Exception):
    pass


async def download_snapshot(
    client: httpx.AsyncClient,
    ref: SnapshotRef,
    destination: Path,
    *,
    max_bytes: int,
    attempts: int,
    backoff: BackoffPolicy,
    log: Log,
) -> int:
    """Stream the zip into `destination`; the number of bytes written.

    Retries with backoff on connection errors, 408/429/5xx and bodies shorter than their
    Content-Length (a cut connection is never mistaken for a complete file); any other
    non-200 is SnapshotUnavailable at once.
    """
    delays = Backoff(backoff)
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            return await _download_once(client, ref.url, destination, max_bytes)
        except _Retryable as error:
            problem = str(error)
        if attempt < attempts:
            delay = delays.next()
            log.warning(
                "snapshot download attempt %d/%d failed (%s); retrying in %.2fs",
                attempt,
                attempts,
                problem,
                delay,
            )
            await asyncio.sleep(delay)
    raise DownloadFailed(f"{attempts} attempts failed; last: {problem}")


async def _download_once(
    client: httpx.AsyncClient, url: str, destination: Path, max_bytes: int
) -> int:
    try:
        async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            status = response.status_code
            if status >= 500 or status in (408, 429):
                raise _Retryable(f"HTTP {status}")
            if status != 200:
                raise SnapshotUnavailable(status, url)
            declared = _content_length(response)
            if declared is not None and declared > max_bytes:
                raise SnapshotTooLarge(f"the snapshot is {declared} bytes, over {max_bytes}")
            received = 0
            with open(destination, "wb") as out:
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > max_bytes:
                        raise SnapshotTooLarge(f"the snapshot exceeds {max_bytes} bytes")
                    out.write(chunk)
    except httpx.TransportError as error:
        raise _Retryable(f"{type(error).__name__}: {error}") from None
    if declared is not None and received != declared:
        raise _Retryable(f"truncated body: {received} of {declared} bytes")
    return received


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def hydrate_project(
    client: httpx.AsyncClient,
    ref: SnapshotRef,
    project_dir: Path,
    *,
    max_bytes: int = MAX_BYTES,
    attempts: int = 6,
    backoff: BackoffPolicy = DOWNLOAD_BACKOFF,
    log: Log | None = None,
) -> Extracted:
    """Replace `project_dir` with the snapshot's files, or raise and leave it untouched.

    Raises SnapshotUnavailable, SnapshotTooLarge, DownloadFailed or ArchiveRejected
    (sha256 mismatch, hostile or corrupt zip).
    """
    log = log or logging.getLogger(__name__)
    quiet_url_loggers()
    project_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_old_downloads(project_dir)
    handle, name = tempfile.mkstemp(
        prefix=f".{project_dir.name}{DOWNLOAD_MARK}", suffix=".zip", dir=project_dir.parent
    )
    os.close(handle)
    download = Path(name)
    try:
        size = await download_snapshot(
            client, ref, download, max_bytes=max_bytes, attempts=attempts, backoff=backoff, log=log
        )
        extracted = await asyncio.to_thread(_swap_in, download, project_dir, ref, max_bytes)
    finally:
        download.unlink(missing_ok=True)
    log.info(
        "hydrated snapshot %s (watermark %d): %d files, %d bytes (zip %d bytes)",
        ref.snapshot_id,
        ref.watermark,
        extracted.files,
        extracted.bytes,
        size,
    )
    return extracted


def _swap_in(download: Path, project_dir: Path, ref: SnapshotRef, max_bytes: int) -> Extracted:
    """extract_snapshot, carrying installed dependencies over into the new tree."""
    aside: list[tuple[Path, Path]] = []
    for name in CARRIED_OVER:
        current = project_dir / name
        kept = project_dir.parent / f".{project_dir.name}.keep-{name}"
        if current.is_dir() and not current.is_symlink():
            if not aside:
                verify_sha256(download, ref.sha256)  # refuse before moving anything
            _remove_tree(kept)
            os.rename(current, kept)
        if kept.is_dir():  # also one a killed run left aside
            aside.append((kept, current))
    try:
        extracted = extract_snapshot(download, project_dir, ref.sha256, max_bytes=max_bytes)
    except BaseException:
        for kept, original in aside:  # the old tree is still in place: put them back
            with contextlib.suppress(OSError):
                os.rename(kept, original)
        raise
    for kept, original in aside:
        if os.path.lexists(original):
            _remove_tree(kept)  # the snapshot brings its own
        else:
            os.rename(kept, original)
    return extracted


def _remove_old_downloads(project_dir: Path) -> None:
    pattern = f".{glob.escape(project_dir.name)}{DOWNLOAD_MARK}*"
    for leftover in project_dir.parent.glob(pattern):
        leftover.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = [
    "ArchiveRejected",
    "DownloadFailed",
    "SnapshotTooLarge",
    "SnapshotUnavailable",
    "download_snapshot",
    "hydrate_project",
]
