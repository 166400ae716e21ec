"""Who calls the HTTP API: a signed-in user (a Supabase-style JWT) or the service (its key).

As on Supabase, `Authorization: Bearer` decides who acts; the `apikey` header alone is the
service only when it carries the service key (an anon key grants nothing here).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api.context import services
from velocity.db import Actor
from velocity.errors import AuthenticationRequired
from velocity.tokens import TokenError, verify_user_token

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer",
    description="A user's access token (HS256 JWT, role `authenticated`), or the service key.")
apikey_scheme = APIKeyHeader(
    name="apikey", auto_error=False, scheme_name="apikey",
    description="The service key; any other value (e.g. an anon key) is ignored.")


@dataclass(frozen=True)
class Caller:
    """The user a request acts for, or the service (`user_id` None)."""

    user_id: UUID | None

    @property
    def is_service(self) -> bool:
        return self.user_id is None

    @property
    def actor(self) -> Actor:
        return Actor.service() if self.user_id is None else Actor.user(self.user_id)


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def optional_caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    apikey: Annotated[str | None, Depends(apikey_scheme)],
) -> Caller | None:
    """The caller, or None when the request carries no credential that names one.

    A bearer token that is neither the service key nor a genuine user token is refused
    (401 with the reason), never treated as anonymous.
    """
    settings = services(request).settings
    service_key = settings.api_service_key()
    if bearer is not None:
        if _equal(bearer.credentials, service_key):
            return Caller(None)
        try:
            claims = verify_user_token(bearer.credentials, settings)
        except TokenError as error:
            raise AuthenticationRequired(f"the bearer token was rejected: {error.reason}",
                                         reason=error.reason) from None
        return Caller(claims.user_id)
    if apikey is not None and _equal(apikey, service_key):
        return Caller(None)
    return None


def require_caller(caller: Annotated[Caller | None, Depends(optional_caller)]) -> Caller:
    if caller is None:
        raise AuthenticationRequired("sign in: send Authorization: Bearer <access token>",
                                     reason="missing_token")
    return caller


CurrentCaller = Annotated[Caller, Depends(require_caller)]
