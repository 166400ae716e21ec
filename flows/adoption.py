"""The adopt-legacy flow: the steps of `velocity adopt`, one retryable task per project."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_table_artifact

from tasks.adoption import (
    adopt_legacy_project,
    close_adoption_batch,
    open_adoption_batch,
    survey_legacy_sources,
)
from velocity.adoption import AdoptionOptions, AdoptionReport, ProjectReport


class AdoptionIncomplete(RuntimeError):
    """Some projects failed; the others were adopted, and running again adopts the rest."""


@flow(name="adopt-legacy", log_prints=False)
async def adopt_legacy(source_database_url: str | None = None,
                       source_storage_url: str | None = None,
                       project_ids: list[UUID] | None = None, fix_paths: bool = False,
                       owner: UUID | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Adopt a legacy `project_files` database and/or `project-files` bucket.

    Returns the report (as `velocity adopt --json` prints it) and publishes it as a table
    artifact. Fails with AdoptionIncomplete, after recording the batch as `failed`, when a
    project still failed after its retries.
    """
    options = AdoptionOptions(project_ids=project_ids, fix_paths=fix_paths, owner=owner,
                              dry_run=dry_run)
    found = await survey_legacy_sources(source_database_url, source_storage_url, project_ids)
    report = AdoptionReport(dry_run=dry_run, variant=found.variant, stray_keys=found.stray_keys)
    if not dry_run:
        report.batch_id = await open_adoption_batch(source_database_url, source_storage_url,
                                                    options)
    for project_id in found.project_ids:
        state = await adopt_legacy_project(  # type: ignore[misc]
            source_database_url, source_storage_url, options, project_id, report.batch_id,
            return_state=True)
        if state.is_completed():
            report.projects.append(await state.aresult())
        else:
            report.projects.append(ProjectReport(project_id=project_id, status="failed",
                                                 reason=state.message))
    if report.batch_id is not None:
        await close_adoption_batch(report)
    await acreate_table_artifact(
        key="adopt-legacy",
        table=[{"project": str(p.project_id), "status": p.status, "files": p.files,
                "versions": p.versions, "bytes": p.bytes, "conflicts": len(p.conflicts),
                "rejected": len(p.rejected), "note": p.reason or ""} for p in report.projects],
        description=("Dry run of an adoption" if dry_run
                     else f"Adoption batch {report.batch_id}"),
    )
    failed = [str(p.project_id) for p in report.projects if p.status == "failed"]
    if failed:
        raise AdoptionIncomplete(f"{len(failed)} project(s) failed: {', '.join(failed)}; "
                                 f"batch {report.batch_id} has the rest")
    return report.model_dump(mode="json")
