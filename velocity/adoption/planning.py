"""Planning one project's adoption: what would be written, and what to report, writing nothing.

Paths and file types are judged by the target's own SQL (`internal.path_problem`,
`internal.resolve_file_type`), so the plan agrees with what the RPCs would accept. A dry run
is this plan; a real run writes exactly it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from velocity.adoption.report import (
    Conflict,
    FixedPath,
    HashMismatch,
    Origin,
    ProjectReport,
    RejectedPath,
)
from velocity.adoption.sources import (
    DIRECTORY_TYPES,
    LegacyBucket,
    LegacyProject,
    LegacyRow,
    is_uuid,
    object_sha256,
)
from velocity.db import Database
from velocity.storage import InvalidKey, ObjectStore, validate_key


class AdoptionOptions(BaseModel):
    """How to adopt: which projects (all when None), whether to fix paths, the owner of
    projects the target lacks and the source names no known owner for, and dry run."""

    project_ids: list[UUID] | None = None
    fix_paths: bool = False
    owner: UUID | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class PlannedVersion:
    source_ref: str
    file_type: str
    content_hash: str
    size: int
    author: UUID
    author_defaulted: bool
    content: str | None = None       # text
    storage_key: str | None = None   # binary: its key in the target's object store
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """An item of internal.adopt_files' `versions` (text hashes are computed there)."""
        item: dict[str, Any] = {"file_type": self.file_type, "author": str(self.author),
                                "source_ref": self.source_ref}
        if self.storage_key is None:
            item["content"] = self.content
        else:
            item.update(storage_key=self.storage_key, content_hash=self.content_hash,
                        size_bytes=self.size)
        if self.created_at is not None:
            item["created_at"] = self.created_at.isoformat()
        if self.updated_at is not None:
            item["updated_at"] = self.updated_at.isoformat()
        return item


@dataclass
class PlannedPath:
    path: str
    origin: Origin
    versions: list[PlannedVersion]

    def as_json(self) -> dict[str, Any]:
        return {"file_path": self.path, "versions": [v.as_json() for v in self.versions]}


@dataclass(frozen=True)
class ObjectCopy:
    """Bytes only the legacy bucket holds, to copy into the target store before writing."""

    source_key: str
    target_key: str


@dataclass
class ProjectPlan:
    report: ProjectReport
    create: tuple[str, UUID] | None = None  # (name, owner) of a project to create
    paths: list[PlannedPath] = field(default_factory=list)
    copies: list[ObjectCopy] = field(default_factory=list)


@dataclass(frozen=True)
class TargetFile:
    content_hash: str | None
    file_type: str
    storage_key: str | None
    is_deleted: bool
    version: int


class TargetView:
    """What a plan needs to know about the target database, read-only."""

    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction() as conn:
            (self.max_content_bytes,) = conn.execute(
                "SELECT max_content_bytes FROM internal.config").fetchone()  # type: ignore[misc]
            self.file_types = {row[0] for row in conn.execute(
                "SELECT name FROM internal.file_types")}

    def project_owner(self, project_id: UUID) -> UUID | None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT owner_id FROM projects WHERE id = %s",
                               (project_id,)).fetchone()
        return None if row is None else UUID(str(row[0]))

    def files(self, project_id: UUID) -> dict[str, TargetFile]:
        """Every path the project has, by its current row (a tombstone included)."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT file_path, content_hash, file_type, storage_key, is_deleted, version"
                " FROM project_files WHERE project_id = %s AND is_current_version",
                (project_id,)).fetchall()
        return {row[0]: TargetFile(*row[1:]) for row in rows}

    def known_users(self, ids: Iterable[str]) -> set[str]:
        wanted = sorted({text for text in ids if is_uuid(text)})
        if not wanted:
            return set()
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT id::text FROM user_profiles WHERE id = ANY(%s::uuid[])",
                                (wanted,)).fetchall()
        return {row[0] for row in rows}

    def path_problems(self, paths: Iterable[str]) -> dict[str, str | None]:
        """internal.path_problem of each path: the reason it is refused, or None."""
        wanted = sorted(set(paths))
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT p, internal.path_problem(p) FROM unnest(%s::text[]) p",
                                (wanted,)).fetchall()
        return dict(rows)

    def resolved_types(self, pairs: Iterable[tuple[str, str | None]]) -> dict[
            tuple[str, str | None], str]:
        """The type the write functions store for (path, type named), the type being known
        or None."""
        wanted = sorted(set(pairs), key=lambda pair: (pair[0], pair[1] or ""))
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT p, t, internal.resolve_file_type(p, t)"
                " FROM unnest(%s::text[], %s::text[]) AS pairs (p, t)",
                ([p for p, _ in wanted], [t for _, t in wanted])).fetchall()
        return {(row[0], row[1]): row[2] for row in rows}


# -- paths ------------------------------------------------------------------------------------


def fix_path(path: str) -> tuple[str, list[str]] | None:
    """The normalised path and what was done, or None when nothing safe can be done.

    Backslashes become slashes; leading and trailing slashes, empty and `.` segments go.
    A `..` segment is never resolved: which directory it meant is a guess.
    """
    how: list[str] = []
    fixed = path
    if "\\" in fixed:
        fixed = fixed.replace("\\", "/")
        how.append("backslashes became slashes")
    segments = fixed.split("/")
    if ".." in segments:
        return None
    if fixed.startswith("/"):
        how.append("leading slash removed")
    if fixed.endswith("/") and fixed.strip("/"):
        how.append("trailing slash removed")
    if "" in segments[1:-1]:
        how.append("empty segments removed")
    if "." in segments:
        how.append("'.' segments removed")
    fixed = "/".join(segment for segment in segments if segment not in ("", "."))
    if not how or not fixed or fixed == path:
        return None
    return fixed, how


@dataclass
class PathDecisions:
    final: dict[str, str] = field(default_factory=dict)  # original → path to write
    rejected: dict[str, RejectedPath] = field(default_factory=dict)
    fixed: list[FixedPath] = field(default_factory=list)


def decide_paths(originals: set[str], origin: Origin, target: TargetView,
                 fix_paths: bool) -> PathDecisions:
    """Accept valid paths, fix the fixable ones when asked, reject the rest with the reason."""
    decisions = PathDecisions()
    problems = target.path_problems(originals)
    fixes = {path: fix_path(path) for path in originals if problems[path] is not None}
    fix_problems = target.path_problems(fix[0] for fix in fixes.values() if fix)
    for path in sorted(originals):
        if problems[path] is None:
            decisions.final[path] = path
            continue
        fix = fixes[path]
        fixable = fix is not None and fix_problems[fix[0]] is None
        if fix is not None and fixable and fix_paths:
            decisions.final[path] = fix[0]
            decisions.fixed.append(FixedPath(path=path, fixed_to=fix[0], how=fix[1],
                                             origin=origin))
        else:
            decisions.rejected[path] = RejectedPath(
                path=path, reason=str(problems[path]), origin=origin,
                fixable_to=fix[0] if fix is not None and fixable else None)
    return decisions


# -- choosing the history of a path ------------------------------------------------------------


def _newest_key(row: LegacyRow) -> tuple:
    stamp = row.updated_at or row.created_at
    return (stamp is not None, stamp or datetime.min, row.version or 0, row.source_id)


def _history_key(row: LegacyRow) -> tuple:
    stamp = row.created_at or row.updated_at
    return (row.version or 0, stamp is not None, stamp or datetime.min, row.source_id)


def choose_history(path: str, rows: list[LegacyRow]) -> tuple[list[LegacyRow], list[Conflict]]:
    """The rows of a path, oldest first, with the current one last, and what was odd.

    The current row is the one flagged current (variants with a flag) or the highest
    version (versioned variants without one) or any row (the frontend's, unversioned);
    among several, the newest by updated_at wins and the others stay as older history.
    """
    conflicts: list[Conflict] = []
    if any(row.is_current is not None for row in rows):
        candidates = [row for row in rows if row.is_current]
        if not candidates:
            candidates = [max(rows, key=_newest_key)]
            conflicts.append(Conflict(kind="no_current", path=path, detail=(
                f"no row is flagged current; the newest, row {candidates[0].source_id}, is "
                "made current")))
    else:
        top = max(row.version or 0 for row in rows)
        candidates = [row for row in rows if (row.version or 0) == top]
    current = max(candidates, key=_newest_key)
    others = sorted((row for row in candidates if row is not current), key=_newest_key)
    if others:
        conflicts.append(Conflict(kind="duplicate_current", path=path, detail=(
            f"{len(candidates)} rows are current; kept row {current.source_id}, the newest; "
            f"rows {', '.join(row.source_id for row in others)} are kept as older versions")))
    history = sorted((row for row in rows if row is not current), key=_history_key)
    return [*history, current], conflicts


def _sha256_text(text: str) -> tuple[str, int]:
    data = text.encode()
    return hashlib.sha256(data).hexdigest(), len(data)


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Content:
    """One version's content as found: text, or a binary's key in the legacy bucket."""

    source_ref: str
    text: str | None
    bucket_key: str | None
    sha256: str
    size: int
    source_type: str | None = None
    row: LegacyRow | None = None


@dataclass
class _Draft:
    """A path's versions, oldest first, before types and authors are resolved."""

    path: str
    origin: Origin
    contents: list[_Content]


class ProjectPlanner:
    """Plans one project: the target's view and the legacy sources are given."""

    def __init__(self, target: TargetView, store: ObjectStore, bucket: LegacyBucket | None,
                 options: AdoptionOptions) -> None:
        self.target = target
        self.store = store
        self.bucket = bucket
        self.options = options

    def plan(self, project_id: UUID, rows: list[LegacyRow],
             legacy_project: LegacyProject | None) -> ProjectPlan:
        plan = ProjectPlan(ProjectReport(project_id=project_id))
        owner = self._owner(plan, project_id, legacy_project)
        if owner is None:
            return plan
        bucket_keys = set(self.bucket.keys(project_id)) if self.bucket else set()
        if rows:
            drafts, used_keys = self._from_database(plan, project_id, rows, bucket_keys)
            self._compare_bucket(plan, project_id, drafts, bucket_keys - used_keys)
        else:
            drafts = self._from_bucket(plan, project_id, sorted(bucket_keys))
        paths = self._versions(plan, drafts, owner, rows)
        paths = self._against_target(plan, project_id, paths)
        plan.paths = self._binaries(plan, project_id, paths)
        self._summarise(plan)
        return plan

    def _owner(self, plan: ProjectPlan, project_id: UUID,
               legacy_project: LegacyProject | None) -> UUID | None:
        owner = self.target.project_owner(project_id)
        if owner is not None:
            return owner
        name = (legacy_project.name or "").strip()[:200] if legacy_project else ""
        name = name or f"adopted {project_id}"
        legacy_owner = legacy_project.owner if legacy_project else None
        if legacy_owner and self.target.known_users([legacy_owner]):
            plan.create = (name, UUID(legacy_owner))
        elif self.options.owner is not None:
            if not self.target.known_users([str(self.options.owner)]):
                plan.report.status, plan.report.reason = "skipped", (
                    f"--owner {self.options.owner} is not a user of the target")
                return None
            plan.create = (name, self.options.owner)
        else:
            plan.report.status, plan.report.reason = "skipped", (
                "the project is not in the target and "
                + (f"its legacy owner {legacy_owner} is not a user of the target"
                   if legacy_owner else "the source names no owner")
                + "; pass --owner USER_ID to create it")
            return None
        return plan.create[1]

    def _from_database(self, plan: ProjectPlan, project_id: UUID, rows: list[LegacyRow],
                       bucket_keys: set[str]) -> tuple[list[_Draft], set[str]]:
        report = plan.report
        files = [row for row in rows
                 if not row.is_directory and (row.file_type or "").lower() not in DIRECTORY_TYPES]
        report.directories = len(rows) - len(files)
        decisions = decide_paths({row.path for row in files}, "database", self.target,
                                 self.options.fix_paths)
        report.rejected.extend(decisions.rejected.values())
        report.fixed_paths.extend(decisions.fixed)
        grouped: dict[str, list[LegacyRow]] = defaultdict(list)
        for row in files:
            if row.path in decisions.final:
                grouped[decisions.final[row.path]].append(row)
        drafts, used_keys = [], set()
        for path in sorted(grouped):
            history, conflicts = choose_history(path, grouped[path])
            report.conflicts.extend(conflicts)
            current = history[-1]
            key = current.storage_ref or f"{project_id}/{current.path}"
            if current.is_binary or current.storage_ref or (
                    current.content is None and key in bucket_keys):
                draft = self._binary_draft(plan, path, current, key, bucket_keys)
                used_keys.add(key)
            else:
                draft = self._text_draft(plan, path, history)
            if draft is not None:
                drafts.append(draft)
        return drafts, used_keys

    def _text_draft(self, plan: ProjectPlan, path: str, history: list[LegacyRow]) -> _Draft | None:
        if history[-1].content is None:
            plan.report.rejected.append(RejectedPath(
                path=path, reason="no_content", origin="database"))
            return None
        versions: list[_Content] = []
        for row in history:
            if row.content is None:
                continue
            sha256, size = _sha256_text(row.content)
            if size > self.target.max_content_bytes:
                plan.report.rejected.append(RejectedPath(
                    path=path, reason="content_too_large", origin="database"))
                return None
            self._check_hash(plan, path, row, sha256)
            versions.append(_Content(row.source_id, row.content, None, sha256, size,
                                     row.file_type, row))
        return _Draft(path, "database", versions)

    def _binary_draft(self, plan: ProjectPlan, path: str, row: LegacyRow, key: str,
                      bucket_keys: set[str]) -> _Draft | None:
        if self.bucket is None or key not in bucket_keys:
            plan.report.rejected.append(RejectedPath(
                path=path, reason="binary_missing", origin="database"))
            return None
        sha256, size = self.bucket.sha256(key)
        self._check_hash(plan, path, row, sha256)
        return _Draft(path, "database", [_Content(row.source_id, None, key, sha256, size,
                                                  row.file_type, row)])

    def _check_hash(self, plan: ProjectPlan, path: str, row: LegacyRow, sha256: str) -> None:
        if row.stored_hash is not None and row.stored_hash.strip().lower() != sha256:
            plan.report.hash_mismatches.append(HashMismatch(
                path=path, source_ref=row.source_id, stored=row.stored_hash, computed=sha256))

    def _compare_bucket(self, plan: ProjectPlan, project_id: UUID, drafts: list[_Draft],
                        keys: set[str]) -> None:
        """The database wins where both have a project; say where the bucket disagrees."""
        assert self.bucket is not None or not keys
        current = {draft.path: draft.contents[-1].sha256 for draft in drafts}
        prefix = f"{project_id}/"
        for key in sorted(keys):
            path = key[len(prefix):]
            if path not in current:
                plan.report.conflicts.append(Conflict(kind="storage_only", path=path, detail=(
                    f"object {key} is only in the bucket; the database has this project, "
                    "so it wins and the object is not imported")))
            elif self.bucket is not None and self.bucket.sha256(key)[0] != current[path]:
                plan.report.conflicts.append(Conflict(kind="storage_differs", path=path, detail=(
                    f"object {key} differs from the database's current content; the "
                    "database wins")))

    def _from_bucket(self, plan: ProjectPlan, project_id: UUID, keys: list[str]) -> list[_Draft]:
        """A project only the bucket has: every object is a file, text when it is UTF-8."""
        assert self.bucket is not None or not keys
        prefix = f"{project_id}/"
        by_path = {key[len(prefix):]: key for key in keys}
        decisions = decide_paths(set(by_path), "storage", self.target, self.options.fix_paths)
        plan.report.rejected.extend(decisions.rejected.values())
        plan.report.fixed_paths.extend(decisions.fixed)
        drafts: dict[str, _Draft] = {}
        for original in sorted(decisions.final):
            path, key = decisions.final[original], by_path[original]
            if path in drafts:
                plan.report.rejected.append(RejectedPath(
                    path=original, reason="duplicate_after_fix", origin="storage"))
                continue
            data = self.bucket.read(key) if self.bucket else b""
            sha256, size = hashlib.sha256(data).hexdigest(), len(data)
            text = _utf8_text(data)
            if text is not None and size > self.target.max_content_bytes:
                plan.report.rejected.append(RejectedPath(
                    path=original, reason="content_too_large", origin="storage"))
                continue
            drafts[path] = _Draft(path, "storage", [_Content(
                key, text, None if text is not None else key, sha256, size)])
        return [drafts[path] for path in sorted(drafts)]

    def _versions(self, plan: ProjectPlan, drafts: list[_Draft], owner: UUID,
                  rows: list[LegacyRow]) -> list[PlannedPath]:
        """Types resolved as the write functions resolve them, authors mapped, and repeated
        content dropped (the write functions would make it a no-op)."""
        known_types = self.target.file_types
        wanted = {(d.path, c.source_type if c.source_type in known_types else None)
                  for d in drafts for c in d.contents}
        types = self.target.resolved_types(wanted)
        users = self.target.known_users(row.author for row in rows if row.author)
        paths = []
        for draft in drafts:
            versions: list[PlannedVersion] = []
            for found in draft.contents:
                row = found.row
                named = found.source_type if found.source_type in known_types else None
                file_type = types[(draft.path, named)]
                if found.bucket_key is not None and file_type == "text" and named != "text":
                    file_type = "binary"
                author = row.author if row is not None else None
                known = author is not None and author in users
                version = PlannedVersion(
                    source_ref=found.source_ref, file_type=file_type,
                    content_hash=found.sha256, size=found.size,
                    author=UUID(author) if known and author else owner,
                    author_defaulted=not known, content=found.text,
                    storage_key=found.bucket_key,
                    created_at=row.created_at if row else None,
                    updated_at=(row.updated_at or row.created_at) if row else None)
                previous = versions[-1] if versions else None
                if previous and (previous.content_hash, previous.file_type) == (
                        version.content_hash, version.file_type):
                    continue
                versions.append(version)
            paths.append(PlannedPath(draft.path, draft.origin, versions))
        return paths

    def _against_target(self, plan: ProjectPlan, project_id: UUID,
                        paths: list[PlannedPath]) -> list[PlannedPath]:
        """Adoption only adds paths: one the target has is already there or a conflict; one
        that would put a file where a directory is (or the reverse) is rejected."""
        existing = {} if plan.create else self.target.files(project_id)
        taken = {path for path, row in existing.items() if not row.is_deleted}
        kept = []
        for planned in paths:
            there = existing.get(planned.path)
            final = planned.versions[-1]
            if there is not None:
                if not there.is_deleted and (there.content_hash, there.file_type) == (
                        final.content_hash, final.file_type):
                    plan.report.already_present += 1
                else:
                    plan.report.conflicts.append(Conflict(
                        kind="target_differs", path=planned.path, detail=(
                            f"the target's version {there.version} is "
                            + ("a deletion" if there.is_deleted else "different content")
                            + "; the target is kept")))
                continue
            clash = _clash(planned.path, taken)
            if clash is not None:
                plan.report.rejected.append(RejectedPath(
                    path=planned.path, reason="path_conflict", origin=planned.origin,
                    detail=f"{clash!r} is a file where this path needs a directory"
                    if planned.path.startswith(clash + "/")
                    else f"{clash!r} is a file below this path"))
                continue
            taken.add(planned.path)
            kept.append(planned)
        return kept

    def _binaries(self, plan: ProjectPlan, project_id: UUID,
                  paths: list[PlannedPath]) -> list[PlannedPath]:
        """A binary keeps its bucket key as its storage key when that key is valid in the
        target store; bytes the target store lacks are copied there before the write."""
        kept = []
        for planned in paths:
            final = planned.versions[-1]
            if final.storage_key is None:
                kept.append(planned)
                continue
            source_key = final.storage_key
            target_key = _usable_key(source_key) or f"{project_id}/{planned.path}"
            if self.store.exists(target_key):
                if object_sha256(self.store, target_key)[0] != final.content_hash:
                    plan.report.rejected.append(RejectedPath(
                        path=planned.path, reason="storage_key_taken", origin=planned.origin))
                    continue
            else:
                plan.copies.append(ObjectCopy(source_key, target_key))
            planned.versions[-1] = _with_key(final, target_key)
            kept.append(planned)
        return kept

    def _summarise(self, plan: ProjectPlan) -> None:
        report = plan.report
        report.files = len(plan.paths)
        report.versions = sum(len(p.versions) for p in plan.paths)
        report.bytes = sum(v.size for p in plan.paths for v in p.versions)
        report.from_storage = sum(p.origin == "storage" for p in plan.paths)
        report.authors_defaulted = sum(v.author_defaulted for p in plan.paths
                                       for v in p.versions)
        if not plan.paths:
            plan.create, plan.copies = None, []
            report.status = "nothing_new"
        else:
            report.status = "created" if plan.create else "imported"


def _clash(path: str, taken: set[str]) -> str | None:
    """A taken path that is a directory of `path`, or a file below it, if any."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        ancestor = "/".join(parts[:depth])
        if ancestor in taken:
            return ancestor
    prefix = path + "/"
    return next((other for other in sorted(taken) if other.startswith(prefix)), None)


def _usable_key(key: str) -> str | None:
    try:
        return validate_key(key)
    except InvalidKey:
        return None


def _with_key(version: PlannedVersion, key: str) -> PlannedVersion:
    return replace(version, storage_key=key)


def _utf8_text(data: bytes) -> str | None:
    """The text of an object when it is UTF-8 without NUL (text cannot hold NUL), else None."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
