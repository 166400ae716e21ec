"""Adoption tasks: survey the legacy sources, open a batch, adopt one project, close the batch.

Each task opens the sources itself, so a retried or resumed task needs nothing from another
process; a project's task is the unit of retry (its write is one transaction).
"""

from __future__ import annotations

from asyncio import to_thread
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.resources import database, object_store
from tasks.retries import RETRY_TRANSIENT
from velocity.adoption import (
    AdoptionOptions,
    AdoptionReport,
    LegacySources,
    LegacySurvey,
    ProjectReport,
    adopt_project,
    survey,
)
from velocity.adoption.batches import close_batch, open_batch
from velocity.settings import get_settings


def _sources(database_url: str | None, storage_url: str | None) -> LegacySources:
    return LegacySources.open(database_url, storage_url, get_settings())


@task(name="survey-legacy-sources", timeout_seconds=300, cache_policy=NO_CACHE,
      **RETRY_TRANSIENT)
async def survey_legacy_sources(database_url: str | None, storage_url: str | None,
                                project_ids: list[UUID] | None) -> LegacySurvey:
    """The legacy variant, the projects to adopt (those asked for, each checked to be in a
    source, or all) and bucket keys outside any project folder."""
    def surveyed() -> LegacySurvey:
        with _sources(database_url, storage_url) as sources:
            return survey(sources, project_ids)

    return await to_thread(surveyed)


@task(name="open-adoption-batch", timeout_seconds=60, cache_policy=NO_CACHE, **RETRY_TRANSIENT)
async def open_adoption_batch(database_url: str | None, storage_url: str | None,
                              options: AdoptionOptions) -> UUID:
    """A new running batch; returns its id (what `velocity adopt --undo` takes)."""
    def opened() -> UUID:
        with _sources(database_url, storage_url) as sources:
            return open_batch(database(), sources.describe(), options)

    return await to_thread(opened)


@task(name="adopt-legacy-project", timeout_seconds=1800, cache_policy=NO_CACHE,
      **RETRY_TRANSIENT)
async def adopt_legacy_project(database_url: str | None, storage_url: str | None,
                               options: AdoptionOptions, project_id: UUID,
                               batch_id: UUID | None) -> ProjectReport:
    """Plan one project and, with a batch, write it in one transaction. Returns its report.

    A retry plans again from the target as it is, so a write interrupted before its commit
    is simply redone, and one that committed finds its paths already present.
    """
    def adopted() -> ProjectReport:
        with _sources(database_url, storage_url) as sources:
            return adopt_project(database(), object_store(), sources, options, project_id,
                                 batch_id)

    report = await to_thread(adopted)
    get_run_logger().info(
        "project_id=%s: %s, %d file(s), %d version(s), %d conflict(s), %d rejected%s",
        project_id, report.status, report.files, report.versions, len(report.conflicts),
        len(report.rejected), f", bulk:apply seq {report.seq}" if report.seq else "",
        extra={"project_id": str(project_id), "event_type": "bulk:apply"})
    return report


@task(name="close-adoption-batch", timeout_seconds=60, cache_policy=NO_CACHE, **RETRY_TRANSIENT)
async def close_adoption_batch(report: AdoptionReport) -> None:
    """Record the report on the batch: `done`, or `failed` when a project failed."""
    await to_thread(close_batch, database(), report)
