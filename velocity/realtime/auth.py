"""Who may join a project channel: a container token for exactly its topic and live session,
or a user token of a project member. Failures carry the reason the client is told."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import jwt
from psycopg_pool import AsyncConnectionPool

from velocity.realtime.protocol import canonical_topic
from velocity.settings import Settings
from velocity.tokens import (
    CONTAINER_ROLE,
    TokenError,
    verify_container_token,
    verify_user_token,
)


class JoinRefused(Exception):
    """The join is refused; `reason` goes into the phx_reply error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """Who holds a channel, and until when."""

    kind: str  # "container" | "user"
    subject: UUID  # the session id (container) or the user id (user)
    project_id: UUID
    expires_at: float
    jti: str | None = None

    @property
    def is_container(self) -> bool:
        return self.kind == "container"


def _claimed_role(token: str) -> str | None:
    """Which verifier applies; the claims are verified by that verifier, not trusted here."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


def verify_token(token: str | None, project_id: UUID, settings: Settings) -> Principal:
    """The token's principal for this project's topic (signature, expiry, audience, topic)."""
    if not token:
        raise JoinRefused("missing_token")
    try:
        if _claimed_role(token) == CONTAINER_ROLE:
            claims = verify_container_token(token, settings, topic=canonical_topic(project_id))
            return Principal("container", UUID(claims.sub), project_id, float(claims.exp),
                             claims.jti)
        user = verify_user_token(token, settings)
    except TokenError as error:
        raise JoinRefused(error.reason) from None
    except ValueError:
        raise JoinRefused("malformed") from None
    return Principal("user", user.sub, project_id, float(user.exp))


async def authorize(principal: Principal, pool: AsyncConnectionPool) -> None:
    """The database half: the container's session is live with this token; the user is a
    member of the project."""
    async with pool.connection() as conn:
        if principal.is_container:
            row = await (await conn.execute(
                "SELECT status, token_jti, project_id FROM preview_sessions WHERE id = %s",
                (principal.subject,))).fetchone()
            if row is None or row[0] not in ("creating", "active") or row[1] != principal.jti \
                    or row[2] != principal.project_id:
                raise JoinRefused("session_ended")
            return
        member = await (await conn.execute(
            "SELECT 1 FROM project_members WHERE project_id = %s AND user_id = %s",
            (principal.project_id, principal.subject))).fetchone()
        if member is None:
            raise JoinRefused("not_a_member")
