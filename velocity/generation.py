"""Bulk generation of a project's files: from a packaged template or supplied files, always as
one bulk write (one `bulk:apply` event). Templates live in velocity/templates/ as package data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any
from uuid import UUID

from velocity.db import Actor, Database
from velocity.errors import InvalidInput, NotFound
from velocity.files import BulkResult, FileClient

DEFAULT_TEMPLATE = "static"
_SKIPPED = frozenset({"__pycache__", ".DS_Store"})


def _templates_root() -> Traversable:
    return resources.files("velocity") / "templates"


def template_names() -> list[str]:
    return sorted(entry.name for entry in _templates_root().iterdir()
                  if entry.is_dir() and entry.name not in _SKIPPED)


def template_files(name: str) -> list[dict[str, str]]:
    """Every file of template `name` as {file_path, content}, sorted by path.

    InvalidInput naming the known templates when there is no such template.
    """
    known = template_names()
    if name not in known:
        raise InvalidInput(f"unknown template {name!r}; known templates: {', '.join(known)}",
                           field="template", template=name, known=known)
    files: list[dict[str, str]] = []
    _collect(_templates_root() / name, "", files)
    return sorted(files, key=lambda item: item["file_path"])


def _collect(directory: Traversable, prefix: str, into: list[dict[str, str]]) -> None:
    for entry in directory.iterdir():
        if entry.name in _SKIPPED:
            continue
        path = f"{prefix}{entry.name}"
        if entry.is_dir():
            _collect(entry, f"{path}/", into)
        else:
            into.append({"file_path": path, "content": entry.read_text(encoding="utf-8")})


def generation_payload(template: str | None = None,
                       files: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The bulk payload for exactly one of `template` and `files`, or InvalidInput."""
    if (template is None) == (files is None):
        raise InvalidInput("give exactly one of template and files",
                           field="template" if template is not None else "files")
    if template is not None:
        return template_files(template)
    assert files is not None
    if not files:
        raise InvalidInput("files must not be empty", field="files")
    payload = []
    for index, item in enumerate(files):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"files[{index}] must be an object with file_path and content",
                               field="files")
        payload.append(dict(item))
    return payload


def generate_files(db: Database, project_id: UUID | str, *, template: str | None = None,
                   files: Sequence[Mapping[str, Any]] | None = None) -> BulkResult:
    """Write a template's or the supplied files as the service, in one bulk write."""
    payload = generation_payload(template, files)
    return FileClient(db, Actor.service()).bulk_upsert(project_id, payload)


def project_template(db: Database, project_id: UUID | str) -> tuple[str | None, bool]:
    """The project's template name and whether it has any current file (NotFound if none)."""
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT p.template, EXISTS (SELECT 1 FROM project_files f WHERE f.project_id = p.id"
            " AND f.is_current_version AND NOT f.is_deleted) FROM projects p WHERE p.id = %s",
            (str(project_id),)).fetchone()
    if row is None:
        raise NotFound(f"project {project_id} not found", project_id=str(project_id))
    return row[0], bool(row[1])


def ensure_project_files(db: Database, project_id: UUID | str) -> BulkResult | None:
    """Generate the project's template (its `template`, else static) if it has no file.

    None when the project already has files. Two callers racing write the same content: the
    second write changes nothing and emits no event.
    """
    template, has_files = project_template(db, project_id)
    if has_files:
        return None
    return generate_files(db, project_id, template=template or DEFAULT_TEMPLATE)
