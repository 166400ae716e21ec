"""`POST /webhooks/{name}` over real HTTP with a real Prefect server: refused deliveries start
no flow run; a Supabase INSERT into projects starts bulk-generate, which writes the files."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from prefect.client.orchestration import get_client

from orchestrator.api.webhooks import sign_delivery
from velocity.db import Actor
from velocity.files import FileClient

from .api_support import Api, running_api
from .helpers import wait_for


@pytest.fixture
def api(prefect_server, configured, monkeypatch):
    with running_api(monkeypatch) as running:
        yield running


def flow_run_count() -> int:
    async def count() -> int:
        async with get_client() as client:
            return await client.count_flow_runs()

    return asyncio.run(count())


def flow_run_state(flow_run_id: str) -> tuple[str, str]:
    async def read() -> tuple[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
            flow = await client.read_flow(run.flow_id)
        return flow.name, run.state.type.value if run.state else ""

    return asyncio.run(read())


def deliver(api: Api, name: str, payload: dict, *, timestamp: int | None = None,
            secret: str | None = None, headers: dict | None = None):
    body = json.dumps(payload).encode()
    sent = int(time.time()) if timestamp is None else timestamp
    signature = sign_delivery(secret or api.settings.webhook_signing_secret(), sent, body)
    signed = {"X-Velocity-Timestamp": str(sent), "X-Velocity-Signature": signature,
              "Content-Type": "application/json"}
    return api.client.post(f"/webhooks/{name}", content=body,
                           headers=signed if headers is None else headers)


def project_insert(project_id, template: str | None = "static") -> dict:
    return {"type": "INSERT", "table": "projects", "schema": "public",
            "record": {"id": str(project_id), "name": "p", "template": template},
            "old_record": None}


def test_refused_deliveries_start_nothing(api, new_project):
    project_id, _ = new_project()
    payload = project_insert(project_id)
    body = json.dumps(payload).encode()
    before = flow_run_count()

    missing = api.client.post("/webhooks/supabase", content=body)
    assert missing.status_code == 401
    assert missing.json()["reason"] == "missing_signature"

    wrong = deliver(api, "supabase", payload, secret="not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["reason"] == "bad_signature"

    sent = int(time.time())
    tampered = api.client.post("/webhooks/supabase", content=body + b" ", headers={
        "X-Velocity-Timestamp": str(sent),
        "X-Velocity-Signature": sign_delivery(api.settings.webhook_signing_secret(), sent,
                                              body)})
    assert tampered.status_code == 401 and tampered.json()["reason"] == "bad_signature"

    stale = deliver(api, "supabase", payload, timestamp=int(time.time()) - 301)
    assert stale.status_code == 401 and stale.json()["reason"] == "stale_timestamp"
    future = deliver(api, "supabase", payload, timestamp=int(time.time()) + 301)
    assert future.status_code == 401 and future.json()["reason"] == "stale_timestamp"
    assert flow_run_count() == before


def test_a_project_insert_starts_bulk_generate_once(api, db, new_project):
    project_id, _ = new_project()
    payload = project_insert(project_id)
    body = json.dumps(payload).encode()
    sent = int(time.time())
    headers = {"X-Velocity-Timestamp": str(sent), "Content-Type": "application/json",
               "X-Velocity-Signature": sign_delivery(api.settings.webhook_signing_secret(),
                                                     sent, body)}
    accepted = api.client.post("/webhooks/supabase", content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    reply = accepted.json()
    assert reply["accepted"] is True and reply["workflow"] == "bulk-generate"

    count = flow_run_count()
    replayed = api.client.post("/webhooks/supabase", content=body, headers=headers)
    assert replayed.status_code == 401 and replayed.json()["reason"] == "replayed"
    assert flow_run_count() == count

    wait_for(lambda: flow_run_state(reply["flowRunId"])[1] in ("COMPLETED", "FAILED",
                                                               "CRASHED"),
             timeout=60, interval=0.1, message="the bulk-generate run to finish")
    assert flow_run_state(reply["flowRunId"]) == ("bulk-generate", "COMPLETED")
    files = FileClient(db, Actor.service()).list_current(project_id)
    assert {f.file_path for f in files} >= {"index.html"}


def test_deliveries_that_start_nothing_are_accepted_false(api, new_project):
    project_id, _ = new_project()
    before = flow_run_count()
    update = {**project_insert(project_id), "type": "UPDATE"}
    ignored = deliver(api, "supabase", update)
    assert ignored.status_code == 202
    assert ignored.json()["accepted"] is False and "UPDATE" in ignored.json()["reason"]
    other_table = {**project_insert(project_id), "table": "project_members"}
    assert deliver(api, "supabase", other_table).json()["accepted"] is False
    assert flow_run_count() == before


def test_unknown_names_are_404_and_bad_payloads_422(api, new_project):
    project_id, _ = new_project()
    before = flow_run_count()
    unknown = deliver(api, "no-such-flow", {})
    assert unknown.status_code == 404 and "supabase" in unknown.json()["known"]

    no_type = project_insert(project_id)
    del no_type["type"]
    missing = deliver(api, "supabase", no_type)
    assert missing.status_code == 422
    assert [e["field"] for e in missing.json()["errors"]] == ["type"]

    bad_id = project_insert("not-a-uuid")
    wrong = deliver(api, "supabase", bad_id)
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "record.id"

    bad_parameters = deliver(api, "build-snapshot", {"nope": 1})
    assert bad_parameters.status_code == 422
    assert bad_parameters.json()["code"] == "invalid_parameters"
    assert flow_run_count() == before


def test_a_catalogue_name_takes_the_flow_parameters(api, db, new_project):
    project_id, _ = new_project()
    FileClient(db, Actor.service()).upsert(project_id, "index.html", "<p>hi</p>")
    started = deliver(api, "build-snapshot", {"project_id": str(project_id)})
    assert started.status_code == 202, started.text
    run_id = started.json()["flowRunId"]
    wait_for(lambda: flow_run_state(run_id)[1] in ("COMPLETED", "FAILED", "CRASHED"),
             timeout=60, interval=0.1, message="the build-snapshot run to finish")
    assert flow_run_state(run_id) == ("build-snapshot", "COMPLETED")
    # Observed from the run's task runs once it finished in this process.
    wait_for(lambda: "velocity_snapshot_build_seconds_count 1.0"
             in api.client.get("/metrics").text, timeout=10, message="the build's duration")
