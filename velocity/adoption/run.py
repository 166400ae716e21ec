"""One adoption run: which projects, then per project plan (and, unless dry, write)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from velocity.adoption.batches import close_batch, open_batch, write_plan
from velocity.adoption.planning import AdoptionOptions, ProjectPlanner, TargetView
from velocity.adoption.report import AdoptionReport, ProjectReport
from velocity.adoption.sources import (
    LegacyBucket,
    LegacyDatabase,
    redacted_storage_url,
    redacted_url,
)
from velocity.db import Database
from velocity.errors import InvalidInput
from velocity.settings import Settings
from velocity.storage import ObjectStore, store_from_url


class LegacySurvey(BaseModel):
    """What the sources hold, before anything is planned."""

    variant: str | None
    project_ids: list[UUID]
    stray_keys: list[str]


@dataclass
class LegacySources:
    """The legacy database, the legacy bucket, or both."""

    database: LegacyDatabase | None
    bucket: LegacyBucket | None

    @classmethod
    def open(cls, database_url: str | None, storage_url: str | None,
             settings: Settings) -> LegacySources:
        """Connect to what is named; InvalidInput when nothing is, or a URL is unusable."""
        if not database_url and not storage_url:
            raise InvalidInput("name a source: --from-database URL, --from-storage URL or both")
        bucket = None
        if storage_url:
            try:
                bucket = LegacyBucket(store_from_url(storage_url, settings), storage_url)
            except ValueError as error:
                raise InvalidInput(f"--from-storage: {error}") from None
        database = LegacyDatabase(database_url) if database_url else None
        return cls(database, bucket)

    def close(self) -> None:
        if self.database is not None:
            self.database.close()

    def __enter__(self) -> LegacySources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Where the data comes from, without secrets (recorded on the batch)."""
        return {
            "database": redacted_url(self.database.url) if self.database else None,
            "variant": self.database.variant if self.database else None,
            "storage": redacted_storage_url(self.bucket.url) if self.bucket else None,
        }

    def project_ids(self, wanted: list[UUID] | None) -> list[UUID]:
        """Projects either source has, or those asked for (each must be in a source)."""
        found = set(self.database.project_ids() if self.database else [])
        found |= set(self.bucket.project_ids() if self.bucket else [])
        if wanted is None:
            return sorted(found)
        missing = [str(project) for project in wanted if project not in found]
        if missing:
            raise InvalidInput(f"project(s) in neither source: {', '.join(missing)}",
                               projects=missing)
        return list(dict.fromkeys(wanted))


def survey(sources: LegacySources, wanted: list[UUID] | None) -> LegacySurvey:
    return LegacySurvey(
        variant=sources.database.variant if sources.database else None,
        project_ids=sources.project_ids(wanted),
        stray_keys=sources.bucket.stray_keys() if sources.bucket else [])


def adopt_project(db: Database, store: ObjectStore, sources: LegacySources,
                  options: AdoptionOptions, project_id: UUID,
                  batch_id: UUID | None) -> ProjectReport:
    """Plan one project and, with a batch (not a dry run), write the plan into it."""
    rows = sources.database.rows(project_id) if sources.database else []
    legacy_project = sources.database.project(project_id) if sources.database else None
    planner = ProjectPlanner(TargetView(db), store, sources.bucket, options)
    plan = planner.plan(project_id, rows, legacy_project)
    if batch_id is not None and plan.paths:
        plan.report.seq = write_plan(db, store, sources.bucket, batch_id, plan)
    return plan.report


def adopt(db: Database, store: ObjectStore, sources: LegacySources, options: AdoptionOptions,
          on_project: Callable[[int, int, UUID], None] | None = None) -> AdoptionReport:
    """The whole run. A project that fails is reported `failed` and the others go on; the
    batch is then `failed` too, and running again adopts what is still missing."""
    found = survey(sources, options.project_ids)
    report = AdoptionReport(dry_run=options.dry_run, variant=found.variant,
                            stray_keys=found.stray_keys)
    if not options.dry_run:
        report.batch_id = open_batch(db, sources.describe(), options)
    for index, project_id in enumerate(found.project_ids):
        if on_project is not None:
            on_project(index, len(found.project_ids), project_id)
        try:
            outcome = adopt_project(db, store, sources, options, project_id, report.batch_id)
        except Exception as error:  # one project's failure must not stop the others
            outcome = ProjectReport(project_id=project_id, status="failed",
                                    reason=f"{type(error).__name__}: {error}")
        report.projects.append(outcome)
    if report.batch_id is not None:
        close_batch(db, report)
    return report
