"""The build-snapshot flow: build or reuse, then publish the manifest summary as an artifact."""

from __future__ import annotations

from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_table_artifact

from tasks.snapshots import build_project_snapshot
from velocity.snapshots import SnapshotResult


@flow(name="build-snapshot", log_prints=False)
async def build_snapshot_flow(project_id: UUID, force: bool = False) -> SnapshotResult:
    """Build (or reuse) the snapshot of a project's current files."""
    result = await build_project_snapshot(project_id, force=force)
    await acreate_table_artifact(
        key=f"snapshot-{project_id}",
        table=[{"snapshot": str(result.snapshot_id), "watermark": result.watermark,
                "files": result.files, "bytes": result.bytes, "sha256": result.sha256,
                "reused": result.reused}],
        description=f"Snapshot of project {project_id}",
    )
    return result
