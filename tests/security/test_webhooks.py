"""Attacker input: webhook bodies, signatures and timestamps (`POST /webhooks/{name}`).

Without the secret nothing gets past the signature (401 with the reason); with it, a body
that is not a JSON object of the right shape is 422, an unknown name 404, too large a body
413. None starts a flow run or records the delivery (so a corrected retry is not refused as
a replay), and no table changes. Covered in tests/test_api_webhooks.py already: a missing
header, a wrong secret, a tampered body, stale and future timestamps, replays, an unknown
name, a Supabase payload without `type` or with a non-uuid record id, unknown flow
parameters.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prefect.client.orchestration import get_client

from orchestrator.api.webhooks import sign_delivery

from .http import deep_json
from .state import unchanged


@pytest.fixture(scope="module", autouse=True)
def prefect(prefect_server):
    """Flow runs are counted on the session's Prefect server."""


def flow_run_count() -> int:
    async def count() -> int:
        async with get_client() as client:
            return await client.count_flow_runs()

    return asyncio.run(count())


def signed(api, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    sent = timestamp or str(int(time.time()))
    return {"X-Velocity-Timestamp": sent, "Content-Type": "application/json",
            "X-Velocity-Signature": sign_delivery(api.settings.webhook_signing_secret(), sent,
                                                  body)}


def deliver(api, name: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return api.client.post(f"/webhooks/{name}", content=body, headers=headers)


SIGNED_BODIES = {
    "deep JSON": deep_json(100_000),
    "nested past the depth limit": b'{"project_id": ' + b"[" * 70 + b"]" * 70 + b"}",
    "NaN": b'{"type": "INSERT", "table": "projects", "schema": "public", "record": NaN}',
    "a lone surrogate": b'{"type": "INSERT", "table": "projects", "schema": "public",'
                        b' "record": {"id": "\\ud800"}}',
    "invalid UTF-8": b'{"type": "\xff"}',
    "an array": b"[]",
    "a string": b'"INSERT"',
    "not JSON": b"type=INSERT&table=projects",
}


@pytest.mark.parametrize("case", list(SIGNED_BODIES))
def test_a_signed_body_that_is_not_a_json_object_starts_nothing(db, api, storage, case):
    body = SIGNED_BODIES[case]
    before = flow_run_count()
    with unchanged(db, storage):
        reply = deliver(api, "supabase", body, signed(api, body))
    assert reply.status_code == 422, reply.text
    assert reply.json()["errors"][0]["field"] == "body"
    assert flow_run_count() == before


def test_flow_parameters_that_would_load_a_stored_block_are_refused(db, api, storage):
    body = json.dumps({"project_id": {"$ref": {"block_document_id": "x"}}}).encode()
    before = flow_run_count()
    with unchanged(db, storage):
        reply = deliver(api, "build-snapshot", body, signed(api, body))
    assert reply.status_code == 422 and reply.json()["code"] == "invalid_parameters"
    assert flow_run_count() == before


@pytest.mark.parametrize("timestamp", ["", "soon", "1.5e9", "0x6000000", "-1", "9" * 5000])
def test_a_malformed_or_absurd_timestamp_is_refused(db, api, timestamp):
    body = b"{}"
    headers = signed(api, body, timestamp=timestamp or None)
    if not timestamp:
        headers["X-Velocity-Timestamp"] = ""
    with unchanged(db):
        reply = deliver(api, "supabase", body, headers)
    assert reply.status_code == 401, reply.text
    assert reply.json()["reason"] in {"missing_signature", "malformed_timestamp",
                                      "stale_timestamp"}


def test_signature_variants_that_are_not_the_signature_are_refused(db, api):
    body = b'{"type": "UPDATE", "table": "projects", "schema": "public"}'
    genuine = signed(api, body)
    digest = genuine["X-Velocity-Signature"].removeprefix("sha256=")
    variants = [digest, "sha256=" + digest.upper(), "SHA256=" + digest, "sha1=" + digest,
                "sha256=" + digest[:-2], "sha256=" + digest + "00", "sha256=", "sha256=" + "0" * 64,
                "sha256=" + digest + ",sha256=" + digest]
    with unchanged(db):
        for variant in variants:
            reply = deliver(api, "supabase", body, {**genuine, "X-Velocity-Signature": variant})
            assert reply.status_code == 401, variant
            assert reply.json()["reason"] == "bad_signature", variant
        # A signature made for another timestamp does not hold for this one.
        other = signed(api, body, timestamp=str(int(time.time()) - 5))
        reply = deliver(api, "supabase", body, {**genuine,
                                                "X-Velocity-Signature":
                                                    other["X-Velocity-Signature"]})
        assert reply.status_code == 401 and reply.json()["reason"] == "bad_signature"


def test_names_are_checked_only_after_the_signature(db, api):
    body = b"{}"
    with unchanged(db):
        unsigned = api.client.post("/webhooks/drop%20table", content=body)
        assert unsigned.status_code == 401
        unknown = deliver(api, "drop%20table", body, signed(api, body))
    assert unknown.status_code == 404 and "supabase" in unknown.json()["known"]


def test_too_large_a_body_is_413_declared_or_streamed(db, api):
    chunk = b" " * (64 * 1024)
    with unchanged(db):
        declared = api.client.post("/webhooks/supabase", content=chunk * 17,
                                    headers={"Content-Type": "application/json"})
        streamed = api.client.post("/webhooks/supabase", content=iter([chunk] * 17),
                                   headers={"Content-Type": "application/json"})
    for reply in (declared, streamed):
        assert reply.status_code == 413 and reply.json()["limit"] == 1024 * 1024
