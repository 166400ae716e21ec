"""Generation task: write a template's or the supplied files as one bulk write."""

from __future__ import annotations

from asyncio import to_thread
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.resources import database
from tasks.retries import RETRY_TRANSIENT
from velocity.files import BulkResult
from velocity.generation import generate_files


@task(name="bulk-generate-files", timeout_seconds=120, cache_policy=NO_CACHE,
      **RETRY_TRANSIENT)
async def bulk_generate_files(project_id: UUID, template: str | None = None,
                              files: list[dict[str, Any]] | None = None) -> BulkResult:
    """Write exactly one of a packaged template or the supplied files, as the service.

    Args: the project; a template name (velocity/templates/) or a list of
    {file_path, content, file_type?} items.
    Returns the bulk write's result: one bulk:apply event (its seq), or none if nothing
    changed. InvalidInput, writing nothing, for both or neither or an unknown template.
    """
    result = await to_thread(generate_files, database(), project_id, template=template,
                             files=files)
    source = f"template {template}" if template is not None else "supplied files"
    get_run_logger().info(
        "project_id=%s: bulk:apply of %s, %d changed, %d unchanged (seq %s)", project_id,
        source, result.changed, result.unchanged, result.seq,
        extra={"project_id": str(project_id), "event_type": "bulk:apply"})
    return result
