"""The bulk-generate flow: a template's or the supplied files as one bulk write, summarised
as a table artifact."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_table_artifact

from tasks.generation import bulk_generate_files


@flow(name="bulk-generate", log_prints=False)
async def bulk_generate(project_id: UUID, template: str | None = None,
                        files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write exactly one of `template` (a packaged template's name) or `files`
    ({file_path, content, file_type?} items) to the project, as one bulk:apply.

    Fails with InvalidInput, writing nothing, for both, neither or an unknown template.
    """
    result = await bulk_generate_files(project_id, template=template, files=files)
    source = f"template {template}" if template is not None else f"{len(files or [])} files"
    await acreate_table_artifact(
        key=f"bulk-generate-{project_id}",
        table=[item.model_dump(mode="json") for item in result.files],
        description=(f"Bulk generation of project {project_id} from {source}: "
                     f"{result.changed} changed, {result.unchanged} unchanged, "
                     f"bulk:apply seq {result.seq}"),
    )
    return result.model_dump(mode="json")
