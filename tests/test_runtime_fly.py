"""The fly runtime against the Machines API's documented requests, replies and error bodies.

respx stands where api.machines.dev would be: every test checks what the runtime sent (path,
query, body) as well as what it made of the reply.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import respx

from velocity.runtimes import ContainerNotFound, ContainerSpec, RuntimeFailure, get_runtime
from velocity.runtimes.base import CONTAINER_ENV_KEYS, LABEL_MANAGED, LABEL_SESSION_ID
from velocity.runtimes.fly import FlyRuntime
from velocity.settings import Settings

API = "https://api.machines.dev/v1/apps/previews"
MACHINE_ID = "3d8d9d5cd97e89"
INSTANCE_ID = "01H3JK6ZP6R4MXV6Z4S6VY5M6Q"


def spec(dev_command: str | None = None) -> ContainerSpec:
    session, project = str(uuid.uuid4()), str(uuid.uuid4())
    return ContainerSpec(session_id=session, project_id=project, dev_command=dev_command, env={
        "PROJECT_ID": project, "SESSION_ID": session,
        "SNAPSHOT_URL": "https://api.example.test/snap.zip#sha256=ab&watermark=3&id=s1",
        "REALTIME_URL": "wss://api.example.test/realtime/v1/websocket",
        "REALTIME_TOKEN": "token"}, labels={"tier": "free"})


def machine(state: str = "started", labels: dict[str, str] | None = None,
            machine_id: str = MACHINE_ID, events: list | None = None) -> dict:
    """A Machine object as the API documents it (fields we do not use included)."""
    return {
        "id": machine_id, "name": "velocity-abc", "state": state, "region": "ams",
        "instance_id": INSTANCE_ID, "private_ip": "fdaa:0:1:a7b:7d:1:2:3",
        "image_ref": {"registry": "registry.fly.io", "repository": "previews",
                      "tag": "agent", "digest": "sha256:00"},
        "config": {"image": "registry.fly.io/previews:agent", "env": {},
                   "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512},
                   "metadata": labels or {}, "auto_destroy": True,
                   "restart": {"policy": "on-failure", "max_retries": 3}},
        "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:02Z",
        "events": events or [],
    }


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def fly(sleeps: list[float]) -> FlyRuntime:
    return FlyRuntime("previews", "registry.fly.io/previews:agent", "fly-token", region="ams",
                      cpus=2, memory_mb=1024, restart_retries=4, attempts=3,
                      backoff_seconds=0.25, sleep=sleeps.append)


@respx.mock
def test_start_creates_a_machine_with_only_the_contract_and_waits_for_started(fly):
    wanted = spec(dev_command="npm run dev")
    created = respx.post(f"{API}/machines").mock(return_value=httpx.Response(
        200, json=machine("created", wanted.container_labels())))
    waited = respx.get(f"{API}/machines/{MACHINE_ID}/wait").mock(
        return_value=httpx.Response(200, json={"ok": True}))
    respx.get(f"{API}/machines/{MACHINE_ID}").mock(return_value=httpx.Response(
        200, json=machine("started", wanted.container_labels())))

    info = fly.start(wanted)

    request = created.calls.last.request
    assert request.headers["authorization"] == "Bearer fly-token"
    body = json.loads(request.content)
    config = body["config"]
    assert body["region"] == "ams" and body["name"].startswith("velocity-")
    assert config["image"] == "registry.fly.io/previews:agent"
    assert sorted(config["env"]) == sorted(CONTAINER_ENV_KEYS)
    assert config["env"] == wanted.env
    assert config["guest"] == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024}
    assert config["restart"] == {"policy": "on-failure", "max_retries": 4}
    assert config["auto_destroy"] is True
    assert config["metadata"] == {**wanted.labels, LABEL_SESSION_ID: wanted.session_id,
                                  "velocity.project_id": wanted.project_id,
                                  LABEL_MANAGED: "true"}
    assert config["init"]["cmd"] == ["--port", "8080", "--health-port", "8081",
                                     "--dev-command", "npm run dev"]
    wait = waited.calls.last.request.url.params
    assert (wait["state"], wait["instance_id"], wait["timeout"]) == ("started", INSTANCE_ID,
                                                                      "60")
    assert info.container_id == MACHINE_ID and info.state == "running"
    assert info.url == f"http://{MACHINE_ID}.vm.previews.internal:8080"
    assert info.health_url == f"http://{MACHINE_ID}.vm.previews.internal:8081/healthz"
    assert info.labels[LABEL_SESSION_ID] == wanted.session_id


@respx.mock
def test_rate_limits_and_server_errors_are_retried_with_backoff(fly, sleeps):
    created = respx.post(f"{API}/machines").mock(side_effect=[
        httpx.Response(429, json={"error": "rate limit exceeded"}, headers={"Retry-After": "1"}),
        httpx.Response(503, json={"error": "service unavailable"}),
        httpx.Response(200, json=machine("created")),
    ])
    respx.get(f"{API}/machines/{MACHINE_ID}/wait").mock(
        return_value=httpx.Response(200, json={"ok": True}))
    respx.get(f"{API}/machines/{MACHINE_ID}").mock(
        return_value=httpx.Response(200, json=machine()))

    assert fly.start(spec()).state == "running"
    assert created.call_count == 3
    assert sleeps == [1.0, 0.5]  # Retry-After wins over a shorter backoff; then 0.25 * 2


@respx.mock
def test_the_last_failed_try_raises_a_clear_error_and_creates_nothing_more(fly, sleeps):
    created = respx.post(f"{API}/machines").mock(return_value=httpx.Response(
        500, json={"error": "failed to launch VM: insufficient capacity",
                   "status": "insufficient_capacity"}))
    with pytest.raises(RuntimeFailure) as raised:
        fly.start(spec())
    assert created.call_count == 3 and len(sleeps) == 2
    assert "could not create a machine after 3 tries" in raised.value.message
    assert "HTTP 500: failed to launch VM: insufficient capacity" in raised.value.message


@respx.mock
def test_a_client_error_is_reported_at_once_with_flys_message(fly, sleeps):
    created = respx.post(f"{API}/machines").mock(return_value=httpx.Response(
        422, json={"error": "invalid config.guest.memory_mb: 1024 is not a multiple of 256"}))
    with pytest.raises(RuntimeFailure) as raised:
        fly.start(spec())
    assert created.call_count == 1 and sleeps == []
    assert raised.value.facts["status"] == 422
    assert "HTTP 422: invalid config.guest.memory_mb" in raised.value.message


@respx.mock
def test_a_machine_that_never_starts_is_destroyed_and_the_error_says_so(fly):
    respx.post(f"{API}/machines").mock(return_value=httpx.Response(200, json=machine("created")))
    respx.get(f"{API}/machines/{MACHINE_ID}/wait").mock(return_value=httpx.Response(
        408, json={"error": "deadline_exceeded: machine did not reach state started"}))
    destroyed = respx.delete(f"{API}/machines/{MACHINE_ID}").mock(
        return_value=httpx.Response(200, json={"ok": True}))
    with pytest.raises(RuntimeFailure) as raised:
        fly.start(spec())
    assert destroyed.call_count == 1
    assert destroyed.calls.last.request.url.params["force"] == "true"
    assert f"machine {MACHINE_ID}" in raised.value.message
    assert "deadline_exceeded" in raised.value.message


@respx.mock
def test_status_maps_states_and_the_exit_code_of_the_last_exit_event(fly):
    events = [
        {"type": "exit", "status": "stopped", "source": "flyd", "timestamp": 1714557600000,
         "request": {"exit_event": {"exit_code": 1, "oom_killed": False, "restarting": True}}},
        {"type": "start", "status": "started", "source": "flyd", "timestamp": 1714557601000},
        {"type": "exit", "status": "stopped", "source": "flyd", "timestamp": 1714557602000,
         "request": {"exit_event": {"exit_code": 137, "oom_killed": True}}},
    ]
    respx.get(f"{API}/machines/{MACHINE_ID}").mock(
        return_value=httpx.Response(200, json=machine("stopped", events=events)))
    info = fly.status(MACHINE_ID)
    assert (info.state, info.exit_code) == ("exited", 137)
    assert info.started_at is not None and info.started_at.year == 2024


@respx.mock
def test_an_unknown_machine_is_container_not_found(fly):
    respx.get(f"{API}/machines/nope").mock(
        return_value=httpx.Response(404, json={"error": "machine not found"}))
    with pytest.raises(ContainerNotFound) as raised:
        fly.status("nope")
    assert raised.value.container_id == "nope"


@respx.mock
def test_stop_sends_sigterm_with_a_timeout_then_remove_destroys(fly):
    stopped = respx.post(f"{API}/machines/{MACHINE_ID}/stop").mock(
        return_value=httpx.Response(200, json={"ok": True}))
    destroyed = respx.delete(f"{API}/machines/{MACHINE_ID}").mock(
        return_value=httpx.Response(200, json={"ok": True}))
    fly.stop(MACHINE_ID, timeout=7, remove=True)
    assert json.loads(stopped.calls.last.request.content) == {"signal": "SIGTERM",
                                                              "timeout": "7s"}
    assert destroyed.call_count == 1


@respx.mock
def test_stopping_or_removing_a_gone_machine_is_fine(fly):
    respx.post(f"{API}/machines/gone/stop").mock(
        return_value=httpx.Response(404, json={"error": "machine not found"}))
    destroyed = respx.delete(f"{API}/machines/gone").mock(
        return_value=httpx.Response(404, json={"error": "machine not found"}))
    fly.stop("gone", remove=True)  # the stop's 404 ends it: nothing left to destroy
    fly.remove("gone")
    assert destroyed.call_count == 1


@respx.mock
def test_list_filters_by_metadata_and_leaves_out_destroyed_machines(fly):
    ours = {LABEL_MANAGED: "true", LABEL_SESSION_ID: "s-1"}
    listed = respx.get(f"{API}/machines").mock(return_value=httpx.Response(200, json=[
        machine("started", ours, "m1"),
        machine("destroyed", ours, "m2"),
        machine("started", {LABEL_MANAGED: "true", LABEL_SESSION_ID: "s-2"}, "m3"),
    ]))
    found = fly.list({LABEL_SESSION_ID: "s-1"})
    assert [info.container_id for info in found] == ["m1"]
    assert listed.calls.last.request.url.params[f"metadata.{LABEL_SESSION_ID}"] == "s-1"


@respx.mock
def test_logs_reads_the_machines_lines_from_the_platform_api(fly):
    logs = respx.get("https://api.fly.io/api/v1/apps/previews/logs").mock(
        return_value=httpx.Response(200, json={"data": [
            {"id": "1", "type": "logs", "attributes": {
                "timestamp": "2024-05-01T10:00:01Z", "message": f"line {n}", "level": "info",
                "instance": MACHINE_ID, "region": "ams", "meta": {}}} for n in range(5)],
            "meta": {"next_token": "abc"}}))
    assert fly.logs(MACHINE_ID, tail=2) == "line 3\nline 4\n"
    assert logs.calls.last.request.url.params["instance"] == MACHINE_ID


@respx.mock
def test_transport_errors_are_retried_then_reported(fly, sleeps):
    respx.get(f"{API}/machines/{MACHINE_ID}").mock(
        side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(RuntimeFailure) as raised:
        fly.status(MACHINE_ID)
    assert "after 3 tries" in raised.value.message and "ConnectError" in raised.value.message
    assert sleeps == [0.25, 0.5]


def test_get_runtime_without_fly_settings_names_the_missing_one(tmp_path):
    settings = Settings(home=tmp_path, fly_image="registry.fly.io/previews:agent")
    with pytest.raises(RuntimeFailure) as raised:
        get_runtime("fly", settings)
    assert "VELOCITY_FLY_APP" in raised.value.message


def test_get_runtime_builds_the_fly_runtime_from_settings(tmp_path):
    settings = Settings(home=tmp_path, fly_app="previews", fly_api_token="t",
                        fly_image="registry.fly.io/previews:agent", fly_cpus=2)
    runtime = get_runtime("fly", settings)
    assert isinstance(runtime, FlyRuntime)
    assert runtime.guest == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512}
