"""Batches: open and close one, write a project's plan into it, and undo it exactly."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from velocity.adoption.planning import AdoptionOptions, ProjectPlan
from velocity.adoption.report import AdoptionReport
from velocity.adoption.sources import LegacyBucket
from velocity.db import Database
from velocity.errors import InvalidInput, VelocityError, from_database_error
from velocity.storage import ObjectStore


class UndoRefused(VelocityError):
    """Undoing the batch would not leave the target as it was; `blocked` says per project."""

    code = "undo_refused"
    http_status = 409


class ProjectUndone(BaseModel):
    project_id: UUID
    files_removed: int
    events_removed: int
    project_removed: bool


class UndoReport(BaseModel):
    batch_id: UUID
    projects: list[ProjectUndone]
    objects_removed: list[str]


def open_batch(db: Database, source: dict[str, Any], options: AdoptionOptions) -> UUID:
    """A new running batch recording where the data comes from and how it is adopted."""
    with db.transaction() as conn:
        (batch_id,) = conn.execute(
            "INSERT INTO internal.adoption_batches (source, options) VALUES (%s, %s)"
            " RETURNING id", (Jsonb(source), Jsonb(options.model_dump(mode="json"))),
        ).fetchone()  # type: ignore[misc]
    return UUID(str(batch_id))


def close_batch(db: Database, report: AdoptionReport) -> None:
    """Record the report; the batch is `failed` when a project failed, else `done`."""
    status = "failed" if report.totals.projects_failed else "done"
    with db.transaction() as conn:
        conn.execute(
            "UPDATE internal.adoption_batches SET status = %s, report = %s, finished_at = now()"
            " WHERE id = %s AND status = 'running'",
            (status, Jsonb(report.model_dump(mode="json")), report.batch_id))


def write_plan(db: Database, store: ObjectStore, bucket: LegacyBucket | None, batch_id: UUID,
               plan: ProjectPlan, chunk: int = 1000) -> int | None:
    """Copy the binaries the target store lacks, then write the plan in one transaction
    (one bulk:apply event per `chunk` paths). Returns the last event's seq."""
    for copy in plan.copies:
        if bucket is None:
            raise InvalidInput(f"binary {copy.source_key} needs the legacy bucket")
        with bucket.open(copy.source_key) as stream:
            store.put(copy.target_key, stream)  # type: ignore[arg-type]
    project_id = plan.report.project_id
    seq = None
    try:
        with db.transaction() as conn:
            if plan.create is not None:
                name, owner = plan.create
                conn.execute("SELECT internal.adopt_project(%s, %s, %s, %s)",
                             (batch_id, project_id, name, owner))
            for copy in plan.copies:
                conn.execute("INSERT INTO internal.adoption_objects (batch_id, storage_key)"
                             " VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (batch_id, copy.target_key))
            for start in range(0, len(plan.paths), chunk):
                items = [path.as_json() for path in plan.paths[start:start + chunk]]
                (seq,) = conn.execute("SELECT internal.adopt_files(%s, %s, %s)",
                                      (batch_id, project_id, Jsonb(items))).fetchone()  # type: ignore[misc]
    except psycopg.Error as error:
        raise _typed(error) from error
    return seq


def undo_batch(db: Database, store: ObjectStore, batch_id: UUID) -> UndoReport:
    """Remove exactly what the batch added, or refuse (UndoRefused) changing nothing.

    Objects the batch copied into the store are deleted after the commit, and only those no
    file version refers to any more.
    """
    try:
        with db.transaction() as conn:
            rows = conn.execute(
                "SELECT project_id, files_removed, events_removed, project_removed,"
                " orphaned_keys FROM internal.undo_adoption(%s)", (batch_id,)).fetchall()
    except psycopg.Error as error:
        if error.sqlstate == "55V01":
            detail = json.loads(error.diag.message_detail or "{}")
            raise UndoRefused(error.diag.message_primary or str(error),
                              blocked=detail.get("blocked", [])) from error
        raise _typed(error) from error
    projects, keys = [], []
    for project_id, files, events, removed, orphaned in rows:
        if project_id is None:
            keys.extend(orphaned)
        else:
            projects.append(ProjectUndone(project_id=project_id, files_removed=files,
                                          events_removed=events, project_removed=removed))
    for key in keys:
        store.delete(key)
    return UndoReport(batch_id=batch_id, projects=projects, objects_removed=keys)


def _typed(error: psycopg.Error) -> Exception:
    typed = from_database_error(error)
    return typed if typed is not None else error
