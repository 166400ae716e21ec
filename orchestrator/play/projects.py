"""What the page asks about people and projects, answered as the signed-in user (RLS)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from velocity import accounts
from velocity.db import Actor, Database
from velocity.errors import InvalidInput, NotFound
from velocity.generation import DEFAULT_TEMPLATE, template_names


class Member(BaseModel):
    userId: UUID
    email: str | None
    role: str


class ProjectSummary(BaseModel):
    id: UUID
    name: str
    template: str | None
    role: str = Field(description="The signed-in user's role: owner, editor or viewer.")
    updatedAt: datetime


class ProjectDetail(ProjectSummary):
    members: list[Member]


class Profile(BaseModel):
    userId: UUID
    email: str | None


def profile(db: Database, user_id: UUID) -> Profile:
    with db.transaction(Actor.user(user_id)) as conn:
        row = conn.execute("SELECT email FROM user_profiles WHERE id = %s",
                           (user_id,)).fetchone()
    if row is None:
        raise NotFound("the token's user has no profile", user_id=str(user_id))
    return Profile(userId=user_id, email=row[0])


_PROJECTS = ("SELECT p.id, p.name, p.template, m.role, p.updated_at FROM projects p"
             " JOIN project_members m ON m.project_id = p.id AND m.user_id = auth.uid()")


def _summary(row: tuple) -> ProjectSummary:
    return ProjectSummary(id=row[0], name=row[1], template=row[2], role=row[3],
                          updatedAt=row[4])


def my_projects(db: Database, user_id: UUID) -> list[ProjectSummary]:
    with db.transaction(Actor.user(user_id)) as conn:
        rows = conn.execute(_PROJECTS + " ORDER BY p.updated_at DESC, p.name").fetchall()
    return [_summary(row) for row in rows]


def my_project(db: Database, user_id: UUID, project_id: UUID) -> ProjectDetail:
    """A project of the user's, with its members; NotFound for any other (RLS hides it)."""
    with db.transaction(Actor.user(user_id)) as conn:
        row = conn.execute(_PROJECTS + " WHERE p.id = %s", (project_id,)).fetchone()
        if row is None:
            raise NotFound("no such project among yours", project_id=str(project_id))
        members = conn.execute(
            "SELECT m.user_id, u.email, m.role FROM project_members m"
            " LEFT JOIN user_profiles u ON u.id = m.user_id"
            " WHERE m.project_id = %s ORDER BY u.email", (project_id,)).fetchall()
    return ProjectDetail(**_summary(row).model_dump(),
                         members=[Member(userId=m[0], email=m[1], role=m[2]) for m in members])


def create_my_project(db: Database, user_id: UUID, name: str,
                      template: str | None) -> ProjectDetail:
    """A new project owned by the user; its files come from `template` when a session starts."""
    template = template or DEFAULT_TEMPLATE
    known = template_names()
    if template not in known:
        raise InvalidInput(f"unknown template {template!r}; known templates: "
                           f"{', '.join(known)}", field="template", known=known)
    project_id = accounts.create_project(db, name, user_id, template=template)
    return my_project(db, user_id, project_id)


def user_for_email(db: Database, email: str) -> UUID:
    """The user with this email, created when there is none (the dev login's sign-up)."""
    email = email.strip()
    with db.transaction() as conn:
        row = conn.execute("SELECT id FROM auth.users WHERE email = %s", (email,)).fetchone()
    if row is not None:
        return UUID(str(row[0]))
    try:
        return accounts.create_user(db, email)
    except InvalidInput:
        with db.transaction() as conn:  # created meanwhile by a concurrent sign-in
            row = conn.execute("SELECT id FROM auth.users WHERE email = %s",
                               (email,)).fetchone()
        if row is None:
            raise
        return UUID(str(row[0]))
