"""Scoped JWTs: container tokens for one channel, and Supabase-style user tokens."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeVar
from uuid import UUID

import jwt
from pydantic import BaseModel, ConfigDict, ValidationError

from velocity.settings import Settings

ALGORITHM = "HS256"
ISSUER = "velocity"
CONTAINER_AUDIENCE = "velocity-realtime"
CONTAINER_ROLE = "preview_agent"
CONTAINER_SCOPE = "read"
USER_AUDIENCE = "authenticated"
USER_ROLE = "authenticated"
# Tolerated clock difference between the machine that minted a token and the one verifying it.
LEEWAY_SECONDS = 10

TokenFailure = Literal[
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_audience",
    "wrong_issuer",
    "wrong_topic",
    "unknown_kid",
    "malformed",
    "alg_not_allowed",
    "wrong_role",
]


class TokenError(Exception):
    """A token that grants nothing; `reason` is what a client is told (a phx_reply, a 401)."""

    def __init__(self, reason: TokenFailure, detail: str = "") -> None:
        super().__init__(f"token rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason: TokenFailure = reason
        self.detail = detail


class ContainerClaims(BaseModel):
    """What a preview container may do: read one project's channel, until `exp`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    iss: str
    aud: str
    sub: str
    role: str
    topic: str
    scope: str
    iat: int
    exp: int
    jti: str

    @property
    def session_id(self) -> str:
        return self.sub


class UserClaims(BaseModel):
    """A signed-in user as Supabase Auth (GoTrue) describes one; other claims are ignored.

    `sub` must be a UUID because `auth.uid()` casts it to one.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: UUID
    role: str
    aud: str | list[str]
    exp: int
    iat: int | None = None
    email: str | None = None

    @property
    def user_id(self) -> UUID:
        return self.sub


def project_topic(project_id: UUID | str) -> str:
    """The realtime channel of a project, as supabase-js names it."""
    return f"realtime:project:{project_id}"


def mint_container_token(
    session_id: UUID | str,
    project_id: UUID | str,
    ttl_seconds: int,
    settings: Settings,
    *,
    now: int | None = None,
) -> tuple[str, ContainerClaims]:
    """A read-only token for one session's channel, signed by the active kid.

    The claims come back too, so the session row can record `jti` and `exp` for revocation.
    """
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    issued = int(time.time()) if now is None else now
    claims = ContainerClaims(
        iss=ISSUER,
        aud=CONTAINER_AUDIENCE,
        sub=str(session_id),
        role=CONTAINER_ROLE,
        topic=project_topic(project_id),
        scope=CONTAINER_SCOPE,
        iat=issued,
        exp=issued + ttl_seconds,
        jti=uuid.uuid4().hex,
    )
    kid, keys = settings.container_token_keys()
    token = jwt.encode(claims.model_dump(), keys[kid], algorithm=ALGORITHM, headers={"kid": kid})
    return token, claims


def verify_container_token(
    token: str, settings: Settings, topic: str | None = None
) -> ContainerClaims:
    """The claims of a genuine, unexpired container token, or TokenError saying why not.

    Any configured kid verifies, so a key can be rotated: add the new kid and make it active,
    and remove the old one once the tokens it signed have expired.
    """
    header = _header(token)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenError("malformed", "no kid in the header")
    _, keys = settings.container_token_keys()
    if kid not in keys:
        raise TokenError("unknown_kid", kid)
    payload = _decode(token, keys[kid], audience=CONTAINER_AUDIENCE, issuer=ISSUER)
    claims = _validate(ContainerClaims, payload)
    if claims.role != CONTAINER_ROLE or claims.scope != CONTAINER_SCOPE:
        raise TokenError("wrong_role", f"role={claims.role!r} scope={claims.scope!r}")
    if topic is not None and claims.topic != topic:
        raise TokenError("wrong_topic", f"token is for {claims.topic!r}")
    return claims


def mint_user_token(
    user_id: UUID | str,
    ttl_seconds: int,
    settings: Settings,
    *,
    email: str | None = None,
    now: int | None = None,
) -> str:
    """A token shaped like Supabase Auth's, for the embedded dev login and for tests."""
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    issued = int(time.time()) if now is None else now
    payload: dict[str, Any] = {
        "iss": f"{settings.public_url.rstrip('/')}/auth/v1",
        "sub": str(user_id),
        "aud": USER_AUDIENCE,
        "role": USER_ROLE,
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    if email is not None:
        payload["email"] = email
    return jwt.encode(payload, settings.user_jwt_secret(), algorithm=ALGORITHM)


def verify_user_token(token: str, settings: Settings) -> UserClaims:
    """The claims of a genuine, unexpired user token, or TokenError saying why not.

    The issuer is not checked: Supabase projects each have their own, and the shared
    secret already proves who signed.
    """
    _header(token)
    payload = _decode(token, settings.user_jwt_secret(), audience=USER_AUDIENCE, issuer=None)
    claims = _validate(UserClaims, payload)
    if claims.role != USER_ROLE:
        raise TokenError("wrong_role", f"role={claims.role!r}")
    return claims


def _header(token: str) -> dict[str, Any]:
    """The unverified header, checked for the one algorithm we sign with.

    Checked before any key is chosen, so `alg: none` or an RS/HS confusion never reaches
    signature verification.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as error:
        raise TokenError("malformed", str(error)) from None
    if header.get("alg") != ALGORITHM:
        raise TokenError("alg_not_allowed", repr(header.get("alg")))
    return header


_REQUIRED_CLAIMS = ["exp", "sub", "aud"]


def _decode(token: str, key: str, *, audience: str, issuer: str | None) -> dict[str, Any]:
    """Verify signature, then expiry, audience and issuer; map pyjwt's errors to reasons."""
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": _REQUIRED_CLAIMS + (["iss"] if issuer else [])},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("not_yet_valid") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature") from None
    except jwt.InvalidAudienceError:
        raise TokenError("wrong_audience") from None
    except jwt.InvalidIssuerError:
        raise TokenError("wrong_issuer") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("alg_not_allowed") from None
    except jwt.InvalidTokenError as error:
        raise TokenError("malformed", str(error)) from None
    return payload


ClaimsT = TypeVar("ClaimsT", ContainerClaims, UserClaims)


def _validate(model: type[ClaimsT], payload: dict[str, Any]) -> ClaimsT:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise TokenError("malformed", str(error.errors(include_url=False))) from None
