"""What an adoption did, or would do: per project, with its conflicts and rejected paths."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field, computed_field
from rich.console import Console
from rich.table import Table

ConflictKind = Literal[
    "duplicate_current",  # several rows claim to be current: the newest is kept
    "no_current",         # no row is flagged current: the newest is made current
    "storage_differs",    # the bucket's object differs from the database: the database wins
    "storage_only",       # an object of a project the database has: not imported
    "target_differs",     # the target already has the path, differently: the target is kept
]
ProjectStatus = Literal["imported", "created", "nothing_new", "skipped", "failed"]
Origin = Literal["database", "storage"]


class Conflict(BaseModel):
    kind: ConflictKind
    path: str
    detail: str


class RejectedPath(BaseModel):
    """A path imported nowhere, and why (a reason of internal.path_problem, or another)."""

    path: str
    reason: str
    origin: Origin
    fixable_to: str | None = None  # what --fix-paths would make of it
    detail: str | None = None


class FixedPath(BaseModel):
    path: str
    fixed_to: str
    how: list[str]
    origin: Origin


class HashMismatch(BaseModel):
    """A legacy row whose stored hash or checksum is not the sha256 of its content."""

    path: str
    source_ref: str
    stored: str
    computed: str


class ProjectReport(BaseModel):
    """One project's part of the run. Counts are of what was (or, dry, would be) written."""

    project_id: UUID
    status: ProjectStatus = "nothing_new"
    reason: str | None = None
    files: int = 0          # paths imported
    versions: int = 0       # file versions written (history included)
    bytes: int = 0          # bytes of those versions
    from_storage: int = 0   # paths whose content came from the bucket
    already_present: int = 0
    directories: int = 0    # directory rows, which become nothing
    authors_defaulted: int = 0  # versions attributed to the owner: no known author
    seq: int | None = None  # the last bulk:apply event's seq (after a real run)
    conflicts: list[Conflict] = Field(default_factory=list)
    rejected: list[RejectedPath] = Field(default_factory=list)
    fixed_paths: list[FixedPath] = Field(default_factory=list)
    hash_mismatches: list[HashMismatch] = Field(default_factory=list)


class Totals(BaseModel):
    projects: int
    projects_created: int
    projects_skipped: int
    projects_failed: int
    files: int
    versions: int
    bytes: int
    from_storage: int
    already_present: int
    directories: int
    authors_defaulted: int
    conflicts: int
    rejected: int
    fixed_paths: int
    hash_mismatches: int


class AdoptionReport(BaseModel):
    batch_id: UUID | None = None
    dry_run: bool
    variant: str | None = None
    stray_keys: list[str] = Field(default_factory=list)  # bucket keys in no project folder
    projects: list[ProjectReport] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def totals(self) -> Totals:
        projects = self.projects
        return Totals(
            projects=sum(p.status in ("imported", "created") for p in projects),
            projects_created=sum(p.status == "created" for p in projects),
            projects_skipped=sum(p.status == "skipped" for p in projects),
            projects_failed=sum(p.status == "failed" for p in projects),
            files=sum(p.files for p in projects),
            versions=sum(p.versions for p in projects),
            bytes=sum(p.bytes for p in projects),
            from_storage=sum(p.from_storage for p in projects),
            already_present=sum(p.already_present for p in projects),
            directories=sum(p.directories for p in projects),
            authors_defaulted=sum(p.authors_defaulted for p in projects),
            conflicts=sum(len(p.conflicts) for p in projects),
            rejected=sum(len(p.rejected) for p in projects) + len(self.stray_keys),
            fixed_paths=sum(len(p.fixed_paths) for p in projects),
            hash_mismatches=sum(len(p.hash_mismatches) for p in projects),
        )


def render_report(console: Console, report: AdoptionReport) -> None:
    """The report as tables for people; `--json` prints the model instead."""
    heading = ("dry run: nothing was changed" if report.dry_run
               else f"batch {report.batch_id} (undo: velocity adopt --undo {report.batch_id})")
    console.print(f"[bold]adoption[/bold] of the {report.variant or 'storage-only'} source — "
                  f"{heading}", highlight=False)
    projects = Table("project", "status", "files", "versions", "bytes", "from bucket",
                     "already there", "note", title="projects")
    for project in report.projects:
        projects.add_row(str(project.project_id), project.status, str(project.files),
                         str(project.versions), str(project.bytes), str(project.from_storage),
                         str(project.already_present), project.reason or "")
    console.print(projects)
    _listing(console, "conflicts", ("project", "path", "kind", "detail"),
             [(p.project_id, c.path, c.kind, c.detail)
              for p in report.projects for c in p.conflicts])
    _listing(console, "rejected paths (imported nowhere)", ("project", "path", "reason", "from",
                                                             "--fix-paths makes it"),
             [(p.project_id, r.path, r.reason, r.origin, r.fixable_to or "")
              for p in report.projects for r in p.rejected]
             + [("", key, "not_a_project", "storage", "") for key in report.stray_keys])
    _listing(console, "fixed paths", ("project", "path", "became", "how"),
             [(p.project_id, f.path, f.fixed_to, ", ".join(f.how))
              for p in report.projects for f in p.fixed_paths])
    _listing(console, "stored hashes that are wrong (sha256 recomputed)",
             ("project", "path", "row", "stored", "sha256"),
             [(p.project_id, h.path, h.source_ref, h.stored, h.computed)
              for p in report.projects for h in p.hash_mismatches])
    totals = report.totals
    console.print(
        f"{totals.projects} project(s) ({totals.projects_created} created, "
        f"{totals.projects_skipped} skipped, {totals.projects_failed} failed), "
        f"{totals.files} file(s), {totals.versions} version(s), {totals.bytes} bytes; "
        f"{totals.already_present} already present, {totals.directories} directory row(s) "
        f"dropped, {totals.conflicts} conflict(s), {totals.rejected} rejected, "
        f"{totals.hash_mismatches} hash mismatch(es), {totals.authors_defaulted} version(s) "
        "attributed to the owner", highlight=False)


def _listing(console: Console, title: str, columns: tuple[str, ...],
             rows: list[tuple[object, ...]]) -> None:
    if not rows:
        return
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)
