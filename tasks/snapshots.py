"""Snapshot tasks: build (or reuse) a project's snapshot, and sign a URL to it."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect import task
from prefect.logging import get_run_logger

from tasks.resources import database, object_store
from tasks.retries import RETRY_TRANSIENT
from velocity.snapshots import SnapshotResult, build_snapshot

SNAPSHOT_URL_TTL_SECONDS = 900


@task(name="build-snapshot", timeout_seconds=300, **RETRY_TRANSIENT)
async def build_project_snapshot(project_id: UUID, force: bool = False) -> SnapshotResult:
    """Build the project's snapshot, or return the last one if no file changed.

    Returns the snapshot's id, watermark, sha256, size, storage keys and whether it was reused.
    Async (the work runs in a thread): a sync task called from an async flow costs ~100 ms
    of Prefect overhead, an async one ~14 ms.
    """
    result = await asyncio.to_thread(build_snapshot, database(), object_store(), project_id,
                                     force=force)
    get_run_logger().info(
        "snapshot %s of project_id=%s: %d files, %d bytes, watermark %d%s",
        result.snapshot_id, project_id, result.files, result.bytes, result.watermark,
        " (reused)" if result.reused else "", extra={"project_id": str(project_id)})
    return result


@task(name="sign-snapshot-url", timeout_seconds=30, **RETRY_TRANSIENT)
async def sign_snapshot_url(storage_key: str, ttl_seconds: int = SNAPSHOT_URL_TTL_SECONDS) -> str:
    """A short-lived signed GET URL for the snapshot zip."""
    return await asyncio.to_thread(object_store().signed_url, storage_key, ttl_seconds)
