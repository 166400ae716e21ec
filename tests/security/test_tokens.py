"""Attacker input: bearer tokens, at every edge that takes one (HTTP API, RPC, gateway).

Forged, expired, `alg: none`, wrong algorithm, wrong kid, wrong audience, another role, a
container token where a user token belongs and the reverse: each is refused with its
reason (401 and WWW-Authenticate over HTTP, a `phx_reply` error on the channel), never
treated as anonymous, and nothing changes. The verifiers themselves are unit-tested in
tests/test_tokens.py; user-token failures at join in tests/test_gateway.py; signed storage
links (tampered, expired, other key) in tests/test_storage.py.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from velocity import accounts
from velocity.tokens import mint_container_token, mint_user_token

from ..phoenix import PhoenixClient
from .http import rpc
from .state import unchanged


def unsigned(claims: dict, header: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


@pytest.fixture(scope="module")
def owned(db, api):
    owner = accounts.create_user(db, "token-owner@example.test")
    project = accounts.create_project(db, "tokens", owner, [])
    return project, owner


def user_claims(owner, **overrides) -> dict:
    now = int(time.time())
    return {"sub": str(owner), "role": "authenticated", "aud": "authenticated",
            "iat": now, "exp": now + 600, **overrides}


def forged_tokens(api, owner, project) -> dict[str, tuple[str, str]]:
    """name: (token, the reason it is refused with)."""
    secret = api.settings.user_jwt_secret()
    kid, keys = api.settings.container_token_keys()
    container, _ = mint_container_token(uuid.uuid4(), project, 600, api.settings)
    return {
        "signed with a guessed secret": (
            jwt.encode(user_claims(owner), "a guessed secret, long enough for HS256"),
            "bad_signature"),
        "signed with the container key": (
            jwt.encode(user_claims(owner), keys[kid], headers={"kid": kid}), "bad_signature"),
        "signed with the service key": (
            jwt.encode(user_claims(owner), api.settings.api_service_key()), "bad_signature"),
        "expired": (mint_user_token(owner, 60, api.settings, now=int(time.time()) - 3600),
                    "expired"),
        "not yet valid": (jwt.encode(user_claims(owner, nbf=int(time.time()) + 3600), secret),
                          "not_yet_valid"),
        "alg none": (unsigned(user_claims(owner), {"alg": "none", "typ": "JWT"}),
                     "alg_not_allowed"),
        "alg HS512": (jwt.encode(user_claims(owner), secret, algorithm="HS512"),
                      "alg_not_allowed"),
        "wrong audience": (jwt.encode(user_claims(owner, aud="service_role"), secret),
                           "wrong_audience"),
        "role service_role": (jwt.encode(user_claims(owner, role="service_role"), secret),
                              "wrong_role"),
        "sub not a uuid": (jwt.encode(user_claims(owner, sub="admin' --"), secret),
                           "malformed"),
        "no exp": (jwt.encode({k: v for k, v in user_claims(owner).items() if k != "exp"},
                              secret), "malformed"),
        "a container token": (container, "bad_signature"),
        "garbage": ("not.a.jwt", "malformed"),
        "huge": ("e" * 20_000, "malformed"),
    }


def test_forged_bearers_are_refused_by_the_api_with_their_reason(db, api, owned):
    project, owner = owned
    for name, (token, reason) in forged_tokens(api, owner, project).items():
        headers = {"Authorization": f"Bearer {token}"}
        with unchanged(db):
            status = api.client.get(f"/sessions/{uuid.uuid4()}/status", headers=headers)
            started = api.client.post("/sessions/start", json={"projectId": str(project)},
                                      headers=headers)
        for reply in (status, started):
            assert reply.status_code == 401, (name, reply.text)
            assert reply.json()["reason"] == reason, name
            assert reason in reply.headers["www-authenticate"], name


def test_forged_bearers_are_refused_by_the_rpc_endpoint(db, api, owned):
    project, owner = owned
    for name, (token, reason) in forged_tokens(api, owner, project).items():
        with unchanged(db):
            reply = rpc(api, "upsert_project_file", {
                "project_uuid": str(project), "p_file_path": "x.txt", "p_content": "x"},
                {"Authorization": f"Bearer {token}", "apikey": "anon"})
        assert reply.status_code == 401, (name, reply.text)
        code = "PGRST303" if reason == "expired" else "PGRST301"
        assert reply.json()["code"] == code, name
        assert reason in reply.json()["message"] or reason == "expired", name


async def test_container_token_forgeries_are_refused_at_join(db, api, owned):
    project, owner = owned
    kid, keys = api.settings.container_token_keys()
    real, claims = mint_container_token(uuid.uuid4(), project, 600, api.settings)
    payload = claims.model_dump()
    cases = {
        "unknown_kid": jwt.encode(payload, keys[kid], headers={"kid": "retired-kid"}),
        "malformed": jwt.encode(payload, keys[kid]),  # no kid at all
        "bad_signature": jwt.encode(payload, api.settings.user_jwt_secret(),
                                    headers={"kid": kid}),
        "alg_not_allowed": unsigned(payload, {"alg": "none", "kid": kid}),
        "wrong_role": jwt.encode({**payload, "scope": "write"}, keys[kid],
                                 headers={"kid": kid}),
        "wrong_issuer": jwt.encode({**payload, "iss": "elsewhere"}, keys[kid],
                                   headers={"kid": kid}),
        "session_ended": real,  # genuine, but no live session holds its jti
    }
    with unchanged(db):
        for reason, token in cases.items():
            client = await PhoenixClient.connect(api.server.ws_url)
            joined = await client.join(f"realtime:project:{project}", token=token)
            assert joined == {"status": "error", "response": {"reason": reason}}, reason
            await client.close()


async def test_a_refreshed_token_for_someone_else_closes_the_channel(db, api, owned, new_user):
    project, owner = owned
    client = await PhoenixClient.connect(api.server.ws_url,
                                         mint_user_token(owner, 600, api.settings))
    assert (await client.join(f"realtime:project:{project}"))["status"] == "ok"
    other = mint_user_token(new_user("other"), 600, api.settings)
    await client.send(f"realtime:project:{project}", "access_token", {"access_token": other})
    system = await client.receive_until(lambda m: m["event"] == "system")
    assert system["payload"]["code"] == "token_rejected"
    assert "wrong_subject" in system["payload"]["message"]
    assert (await client.receive())["event"] == "phx_close"
    await client.close()
