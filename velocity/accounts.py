"""Users and projects: what ops and tests create before files can be written."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from velocity.db import Database
from velocity.errors import InvalidInput

ROLES = ("owner", "editor", "viewer")


def create_user(db: Database, email: str, display_name: str | None = None) -> UUID:
    """A user in auth.users with their profile; the email must be new."""
    email = email.strip()
    if "@" not in email or len(email) > 320:
        raise InvalidInput(f"not an email address: {email!r}", field="email")
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM auth.users WHERE email = %s", (email,)).fetchone():
            raise InvalidInput(f"a user with email {email!r} already exists", field="email")
        # The id is given: Supabase's auth.users (GoTrue's) has no default for it.
        (user_id,) = conn.execute(
            "INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), %s) RETURNING id",
            (email,),
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "INSERT INTO public.user_profiles (id, email, display_name) VALUES (%s, %s, %s)",
            (user_id, email, display_name),
        )
    return UUID(str(user_id))


def parse_member(spec: str) -> tuple[UUID, str]:
    """`USER_ID:ROLE` as the CLI takes it."""
    user, _, role = spec.partition(":")
    if role not in ROLES:
        raise InvalidInput(f"member {spec!r}: role must be one of {', '.join(ROLES)}",
                           field="member")
    try:
        return UUID(user), role
    except ValueError:
        raise InvalidInput(f"member {spec!r}: {user!r} is not a user id", field="member") from None


def create_project(db: Database, name: str, owner_id: UUID | str,
                   members: Iterable[tuple[UUID, str]] = (), template: str | None = None) -> UUID:
    """A project owned by `owner_id`, with extra members; all users must exist."""
    if not name.strip() or len(name.strip()) > 200:
        raise InvalidInput("project name must be 1 to 200 characters", field="name")
    members = list(members)
    with db.transaction() as conn:
        wanted = {str(owner_id), *(str(user) for user, _ in members)}
        found = {str(row[0]) for row in conn.execute(
            "SELECT id FROM public.user_profiles WHERE id = ANY(%s::uuid[])", (list(wanted),))}
        missing = sorted(wanted - found)
        if missing:
            raise InvalidInput(f"no such user: {', '.join(missing)}", field="user_id")
        (project_id,) = conn.execute(
            "INSERT INTO public.projects (name, owner_id, template) VALUES (%s, %s, %s)"
            " RETURNING id", (name.strip(), str(owner_id), template),
        ).fetchone()  # type: ignore[misc]
        for user, role in members:
            conn.execute(
                "INSERT INTO public.project_members (project_id, user_id, role)"
                " VALUES (%s, %s, %s) ON CONFLICT (project_id, user_id) DO UPDATE"
                " SET role = EXCLUDED.role", (project_id, str(user), role),
            )
    return UUID(str(project_id))
