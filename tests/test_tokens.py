"""Container and user tokens: every way a token fails is named, and keys rotate by kid."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from velocity.settings import Settings
from velocity.tokens import (
    TokenError,
    mint_container_token,
    mint_user_token,
    project_topic,
    verify_container_token,
    verify_user_token,
)

KEY_A = "container-key-a-0123456789abcdef0123456789"
KEY_B = "container-key-b-0123456789abcdef0123456789"
USER_SECRET = "user-jwt-secret-0123456789abcdef0123456789"
SESSION = uuid.uuid4()
PROJECT = uuid.uuid4()


def settings_with(tmp_path: Path, keys: dict[str, str], active: str) -> Settings:
    return Settings(
        home=tmp_path,
        token_keys=keys,  # type: ignore[arg-type]
        token_active_kid=active,
        jwt_secret=USER_SECRET,  # type: ignore[arg-type]
    )


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return settings_with(tmp_path, {"a": KEY_A}, "a")


def container_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "velocity",
        "aud": "velocity-realtime",
        "sub": str(SESSION),
        "role": "preview_agent",
        "topic": project_topic(PROJECT),
        "scope": "read",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return claims


def forge(
    claims: dict[str, Any], key: str = KEY_A, kid: str | None = "a", alg: str = "HS256"
) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token with `alg: none`, built by hand since pyjwt will not make one we can verify."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def reason_of(token: str, settings: Settings, topic: str | None = None) -> str:
    with pytest.raises(TokenError) as caught:
        verify_container_token(token, settings, topic=topic)
    return caught.value.reason


def test_container_token_round_trip(settings: Settings) -> None:
    token, minted = mint_container_token(SESSION, PROJECT, 600, settings)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["kid"] == "a"
    claims = verify_container_token(token, settings, topic=f"realtime:project:{PROJECT}")
    assert claims == minted
    assert claims.session_id == str(SESSION)
    assert (claims.iss, claims.aud, claims.role, claims.scope) == (
        "velocity",
        "velocity-realtime",
        "preview_agent",
        "read",
    )
    assert claims.exp - claims.iat == 600
    assert len(claims.jti) == 32
    assert mint_container_token(SESSION, PROJECT, 600, settings)[1].jti != claims.jti


def test_expired(settings: Settings) -> None:
    token, _ = mint_container_token(SESSION, PROJECT, 60, settings, now=int(time.time()) - 3600)
    assert reason_of(token, settings) == "expired"


def test_bad_signature(settings: Settings, tmp_path: Path) -> None:
    forged = forge(container_claims(), key="not-the-configured-key-0123456789abcdef")
    assert reason_of(forged, settings) == "bad_signature"
    token, _ = mint_container_token(SESSION, PROJECT, 60, settings)
    header, _payload, signature = token.split(".")
    other_project = forge(container_claims(topic=project_topic(uuid.uuid4()))).split(".")[1]
    assert reason_of(f"{header}.{other_project}.{signature}", settings) == "bad_signature"
    # a forged expired token is a bad signature first: the signature is checked before claims
    stale = forge(container_claims(exp=1), key="not-the-configured-key-0123456789abcdef")
    assert reason_of(stale, settings) == "bad_signature"


def test_algorithms_other_than_hs256_are_refused(settings: Settings) -> None:
    assert reason_of(unsigned({"alg": "none", "kid": "a"}, container_claims()), settings) == (
        "alg_not_allowed"
    )
    assert reason_of(unsigned({"alg": "None", "kid": "a"}, container_claims()), settings) == (
        "alg_not_allowed"
    )
    assert reason_of(unsigned({"kid": "a"}, container_claims()), settings) == "alg_not_allowed"
    hs512 = forge(container_claims(), key=KEY_A * 2, alg="HS512")
    assert reason_of(hs512, settings) == "alg_not_allowed"


def test_wrong_audience(settings: Settings) -> None:
    assert reason_of(forge(container_claims(aud="authenticated")), settings) == "wrong_audience"


def test_wrong_topic(settings: Settings) -> None:
    token, _ = mint_container_token(SESSION, PROJECT, 60, settings)
    assert reason_of(token, settings, topic=project_topic(uuid.uuid4())) == "wrong_topic"


def test_unknown_kid(settings: Settings) -> None:
    assert reason_of(forge(container_claims(), kid="zzz"), settings) == "unknown_kid"
    assert reason_of(forge(container_claims(), kid=None), settings) == "malformed"


def test_wrong_role_or_scope(settings: Settings) -> None:
    assert reason_of(forge(container_claims(role="service_role")), settings) == "wrong_role"
    assert reason_of(forge(container_claims(scope="write")), settings) == "wrong_role"


def test_malformed(settings: Settings) -> None:
    hs256_header = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImEifQ"  # {"alg":"HS256","kid":"a"}
    for token in ["", "garbage", "a.b.c", f"{hs256_header}.!!!.sig", f"{hs256_header}.e30.x"]:
        assert reason_of(token, settings) == "malformed", token
    missing_jti = container_claims()
    del missing_jti["jti"]
    assert reason_of(forge(missing_jti), settings) == "malformed"
    assert reason_of(forge(container_claims(iss="someone-else")), settings) == "wrong_issuer"


def test_key_rotation(tmp_path: Path) -> None:
    only_a = settings_with(tmp_path, {"a": KEY_A}, "a")
    old_token, _ = mint_container_token(SESSION, PROJECT, 600, only_a)

    both_b_active = settings_with(tmp_path, {"a": KEY_A, "b": KEY_B}, "b")
    assert verify_container_token(old_token, both_b_active).sub == str(SESSION)
    new_token, _ = mint_container_token(SESSION, PROJECT, 600, both_b_active)
    assert jwt.get_unverified_header(new_token)["kid"] == "b"
    assert verify_container_token(new_token, both_b_active).sub == str(SESSION)

    only_b = settings_with(tmp_path, {"b": KEY_B}, "b")
    assert reason_of(old_token, only_b) == "unknown_kid"
    assert verify_container_token(new_token, only_b).sub == str(SESSION)


def test_mint_refuses_nonpositive_ttl(settings: Settings) -> None:
    with pytest.raises(ValueError):
        mint_container_token(SESSION, PROJECT, 0, settings)
    with pytest.raises(ValueError):
        mint_user_token(uuid.uuid4(), -1, settings)


# --- user tokens ---------------------------------------------------------------------------


def user_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 300,
        "email": "dev@example.com",
        "app_metadata": {"provider": "email"},  # Supabase adds more; they are ignored
    }
    claims.update(overrides)
    return claims


def user_reason(token: str, settings: Settings) -> str:
    with pytest.raises(TokenError) as caught:
        verify_user_token(token, settings)
    return caught.value.reason


def test_user_token_round_trip(settings: Settings) -> None:
    user = uuid.uuid4()
    token = mint_user_token(user, 600, settings, email="dev@example.com")
    claims = verify_user_token(token, settings)
    assert claims.user_id == user
    assert (claims.role, claims.aud, claims.email) == (
        "authenticated",
        "authenticated",
        "dev@example.com",
    )


def test_user_token_from_supabase_shape(settings: Settings) -> None:
    token = jwt.encode(user_claims(), USER_SECRET, algorithm="HS256")
    assert verify_user_token(token, settings).email == "dev@example.com"


def test_user_token_failures(settings: Settings) -> None:
    user = uuid.uuid4()
    expired = mint_user_token(user, 60, settings, now=int(time.time()) - 3600)
    assert user_reason(expired, settings) == "expired"
    forged = jwt.encode(user_claims(), "another-secret-0123456789abcdef0123", algorithm="HS256")
    assert user_reason(forged, settings) == "bad_signature"
    assert user_reason(unsigned({"alg": "none"}, user_claims()), settings) == "alg_not_allowed"
    wrong_aud = jwt.encode(user_claims(aud="velocity-realtime"), USER_SECRET, algorithm="HS256")
    assert user_reason(wrong_aud, settings) == "wrong_audience"
    anon = jwt.encode(user_claims(role="anon"), USER_SECRET, algorithm="HS256")
    assert user_reason(anon, settings) == "wrong_role"
    service = jwt.encode(user_claims(role="service_role"), USER_SECRET, algorithm="HS256")
    assert user_reason(service, settings) == "wrong_role"
    not_a_uuid = jwt.encode(user_claims(sub="admin"), USER_SECRET, algorithm="HS256")
    assert user_reason(not_a_uuid, settings) == "malformed"


def test_a_container_token_is_not_a_user_token(settings: Settings) -> None:
    token, _ = mint_container_token(SESSION, PROJECT, 60, settings)
    assert user_reason(token, settings) == "bad_signature"  # different secret altogether
    user_token = mint_user_token(uuid.uuid4(), 60, settings)
    assert reason_of(user_token, settings) == "malformed"  # no kid: no key to check it with
