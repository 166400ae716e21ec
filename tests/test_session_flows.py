"""Session provisioning and stop on real services: PostgreSQL, a Prefect server, the gateway
under uvicorn and the agent as a process, with every failure made to happen for real."""

from __future__ import annotations

import importlib.util
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prefect.logging import disable_run_logger
from psycopg.types.json import Jsonb

from flows.catalogue import WORKFLOWS, UnknownWorkflow, by_name
from flows.sessions import provision_session, stop_session
from orchestrator.app import create_app
from tasks import resources
from tasks.sessions import wait_ready
from velocity import accounts
from velocity.db import Actor, Database
from velocity.errors import InvalidInput, NotFound, PermissionDenied
from velocity.files import FileClient
from velocity.generation import template_files
from velocity.runtimes import (
    RUNTIMES,
    ContainerSpec,
    ProcessRuntime,
    Runtime,
    UnknownRuntime,
    get_runtime,
)
from velocity.runtimes.base import LABEL_SESSION_ID
from velocity.sessions import (
    AgentFailed,
    AgentTimeout,
    SessionNotLive,
    get_session,
    mark_ended,
    open_session,
    wait_for_agent,
)
from velocity.settings import Settings, get_settings
from velocity.snapshots import build_snapshot

from .helpers import file_state
from .preview import database_tree, disk_tree
from .servers import RunningServer, free_port, start_server

SITE = {"index.html": "<h1>my site</h1>", "app.js": "console.log('hi')"}


@dataclass
class Stack:
    settings: Settings
    runtime: Runtime
    runtime_root: Path


def _point_at(monkeypatch: pytest.MonkeyPatch, port: int) -> Settings:
    """The configured settings with the gateway at `port`, as flows will read them."""
    monkeypatch.setenv("VELOCITY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    get_settings.cache_clear()
    resources.object_store.cache_clear()
    return get_settings()


def _remove_containers(runtime: Runtime) -> None:
    for container in runtime.list():
        runtime.stop(container.container_id, timeout=5, remove=True)


@pytest.fixture
def stack(configured, monkeypatch) -> Iterator[Stack]:
    """The gateway serving the very settings the flows read (same home, same secrets)."""
    port = free_port()
    settings = _point_at(monkeypatch, port)
    server: RunningServer = start_server(create_app(settings), port)
    runtime = get_runtime("process", settings)
    try:
        yield Stack(settings, runtime, settings.home / "runtimes" / "process")
    finally:
        _remove_containers(runtime)
        server.stop()


@pytest.fixture
def no_gateway(configured, monkeypatch) -> Iterator[Stack]:
    """Settings whose gateway URL reaches nothing: agents can neither download nor report."""
    settings = _point_at(monkeypatch, free_port())
    runtime = get_runtime("process", settings)
    try:
        yield Stack(settings, runtime, settings.home / "runtimes" / "process")
    finally:
        _remove_containers(runtime)


def _bulk_events(db: Database, project_id: uuid.UUID) -> int:
    with db.transaction() as conn:
        (count,) = conn.execute("SELECT count(*) FROM file_events WHERE project_id = %s"
                                " AND type = 'bulk:apply'", (project_id,)).fetchone()
    return int(count)


def _running(runtime: Runtime, session_id: uuid.UUID) -> list[str]:
    return [info.container_id for info in runtime.list({LABEL_SESSION_ID: str(session_id)})
            if info.state != "exited"]


def _assert_failed_cleanly(db: Database, runtime: Runtime, session_id: uuid.UUID,
                           message: str) -> None:
    row = get_session(db, session_id)
    assert row.status == "error", row
    assert row.error_message and message in row.error_message, row.error_message
    assert row.token_jti is None
    assert _running(runtime, session_id) == []
    assert runtime.list({LABEL_SESSION_ID: str(session_id)}) == []  # removed, not just stopped


# -- open_session --------------------------------------------------------------------------------


def test_open_session_returns_the_live_one(db, new_project):
    project_id, owner = new_project()
    first, created = open_session(db, project_id, owner, "process")
    again, created_again = open_session(db, project_id, owner, "process")
    assert created and not created_again
    assert again.id == first.id and again.status == "creating"
    assert first.expires_at is not None and first.expires_at > first.created_at
    mark_ended(db, first.id)
    third, created_third = open_session(db, project_id, owner, "process")
    assert created_third and third.id != first.id


def test_open_session_is_race_safe(db, new_project):
    project_id, owner = new_project()
    results: list[tuple[uuid.UUID, bool]] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        barrier.wait()
        row, created = open_session(db, project_id, owner, "process")
        results.append((row.id, created))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8
    assert len({session_id for session_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_open_session_checks_the_project_and_membership(db, new_project, new_user):
    project_id, _ = new_project()
    with pytest.raises(NotFound):
        open_session(db, uuid.uuid4(), new_user(), "process")
    with pytest.raises(PermissionDenied):
        open_session(db, project_id, new_user("stranger"), "process")
    viewer = new_user("viewer")
    other, _ = new_project(members=[(viewer, "viewer")])
    row, created = open_session(db, other, viewer, "process")
    assert created and row.user_id == viewer


# -- waiting for the agent (the rows the gateway writes, written here directly) -----------------


def _report(db: Database, session_id: uuid.UUID, status: dict) -> None:
    with db.transaction() as conn:
        conn.execute("SELECT internal.record_agent_status(%s, %s, %s, %s)",
                     ([session_id], [0], [0], [Jsonb(status)]))


def test_wait_for_agent_reads_what_the_agent_reported(db, new_project):
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "process")
    with pytest.raises(AgentTimeout):
        wait_for_agent(db, session.id, 0.2)
    _report(db, session.id, {"ready": False, "error": "hydration: snapshot download refused: "
                             "HTTP 404 from http://x/y"})
    with pytest.raises(AgentFailed) as failed:
        wait_for_agent(db, session.id, 5)
    assert failed.value.snapshot_failed and "HTTP 404" in failed.value.message
    _report(db, session.id, {"ready": False, "error": "apply: disk full"})
    with pytest.raises(AgentFailed) as other:
        wait_for_agent(db, session.id, 5)
    assert not other.value.snapshot_failed
    _report(db, session.id, {"ready": True, "applied_seq": 3, "error": None})
    assert wait_for_agent(db, session.id, 5)["applied_seq"] == 3
    mark_ended(db, session.id)
    with pytest.raises(SessionNotLive):
        wait_for_agent(db, session.id, 5)


async def test_wait_ready_task_notices_an_agent_that_exited(configured, db, new_project,
                                                            monkeypatch):
    monkeypatch.setitem(RUNTIMES, "exits-at-once", _exiting_runtime)
    runtime = get_runtime("exits-at-once", configured)
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "exits-at-once")
    info = runtime.start(ContainerSpec(
        session_id=str(session.id), project_id=str(project_id),
        env={"PROJECT_ID": str(project_id), "SESSION_ID": str(session.id),
             "SNAPSHOT_URL": "http://127.0.0.1:9/x", "REALTIME_URL": "ws://127.0.0.1:9/",
             "REALTIME_TOKEN": "t"}))
    try:
        with disable_run_logger(), pytest.raises(AgentFailed) as failed:
            await wait_ready.fn(session.id, "exits-at-once", info.container_id, 20)
        assert "exited with code 1" in failed.value.message
    finally:
        runtime.remove(info.container_id)


# -- provision-session ---------------------------------------------------------------------------


async def test_provisioning_an_empty_project(prefect_server, stack, db, new_project):
    project_id, owner = new_project()
    result = await provision_session(project_id, owner)
    session = get_session(db, result["id"])
    assert session.status == "active"
    assert session.container_id and session.container_url
    assert session.token_jti and session.snapshot_id and session.flow_run_id
    assert session.agent_status and session.agent_status["ready"]

    template = {item["file_path"]: item["content"].encode() for item in template_files("static")}
    assert database_tree(db, project_id) == template
    assert _bulk_events(db, project_id) == 1
    assert disk_tree(stack.runtime_root / session.container_id / "project") == template
    page = httpx.get(f"{session.container_url}/", timeout=5)
    assert page.status_code == 200 and "Hello from Velocity" in page.text

    again = await provision_session(project_id, owner)  # the live session, as it is
    assert again["id"] == str(session.id) and again["status"] == "active"
    assert len(stack.runtime.list()) == 1


async def test_provisioning_the_row_the_api_created(prefect_server, stack, db, new_project):
    project_id, owner = new_project()
    FileClient(db, Actor.service()).bulk_upsert(
        project_id, [{"file_path": path, "content": text} for path, text in SITE.items()])
    session, _ = open_session(db, project_id, owner, "process")
    result = await provision_session(project_id, owner, session_id=session.id)
    assert result["id"] == str(session.id) and result["status"] == "active"
    assert _bulk_events(db, project_id) == 1  # a project with files gets no template
    container_dir = stack.runtime_root / result["container_id"] / "project"
    assert disk_tree(container_dir) == {path: text.encode() for path, text in SITE.items()}


async def test_unknown_runtime_fails_cleanly(prefect_server, stack, db, new_project):
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "nope")
    with pytest.raises(UnknownRuntime):
        await provision_session(project_id, owner, runtime="nope", session_id=session.id)
    _assert_failed_cleanly(db, stack.runtime, session.id,
                           "start-container failed: unknown runtime 'nope'")


async def test_unknown_template_fails_cleanly(prefect_server, stack, db, new_user):
    owner = new_user()
    project_id = accounts.create_project(db, "templated", owner, template="no-such-template")
    session, _ = open_session(db, project_id, owner, "process")
    before = file_state(db, project_id)
    with pytest.raises(InvalidInput):
        await provision_session(project_id, owner, session_id=session.id)
    _assert_failed_cleanly(db, stack.runtime, session.id,
                           "ensure-project-files failed: unknown template 'no-such-template'")
    assert file_state(db, project_id) == before


def _exiting_runtime(settings: Settings) -> Runtime:
    """A real process runtime whose agent is a program that exits 1 at once."""
    return ProcessRuntime(settings.home / "runtimes" / "exits-at-once", agent_command=["false"])


async def test_an_agent_that_cannot_start_fails_cleanly(prefect_server, stack, db, new_project,
                                                         monkeypatch):
    monkeypatch.setitem(RUNTIMES, "exits-at-once", _exiting_runtime)
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "exits-at-once")
    with pytest.raises(AgentFailed):
        await provision_session(project_id, owner, runtime="exits-at-once",
                                session_id=session.id)
    _assert_failed_cleanly(db, get_runtime("exits-at-once", stack.settings), session.id,
                           "wait-ready failed: the agent exited with code 1")


async def test_an_unreachable_gateway_times_out_cleanly(prefect_server, no_gateway, db,
                                                        new_project):
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "process")
    with pytest.raises(AgentTimeout):
        await provision_session(project_id, owner, session_id=session.id, ready_timeout=2)
    _assert_failed_cleanly(db, no_gateway.runtime, session.id,
                           "wait-ready failed: the agent of session")


async def test_a_lost_snapshot_is_rebuilt_once(prefect_server, stack, db, new_project):
    project_id, owner = new_project()
    FileClient(db, Actor.service()).bulk_upsert(
        project_id, [{"file_path": path, "content": text} for path, text in SITE.items()])
    store = resources.object_store()
    lost = build_snapshot(db, store, project_id)
    store.delete(lost.storage_key)  # the next build reuses it: its object is gone

    result = await provision_session(project_id, owner)
    session = get_session(db, result["id"])
    assert session.status == "active" and session.snapshot_id != lost.snapshot_id
    with db.transaction() as conn:
        (built,) = conn.execute("SELECT count(*) FROM project_snapshots WHERE project_id = %s",
                                (project_id,)).fetchone()
    assert built == 2  # the lost one and exactly one rebuild
    assert session.container_id is not None
    assert disk_tree(stack.runtime_root / session.container_id / "project") == {
        path: text.encode() for path, text in SITE.items()}
    assert [info.container_id for info in stack.runtime.list()] == [session.container_id]


# -- stop-session --------------------------------------------------------------------------------


async def test_stop_session_ends_it_and_removes_the_container(prefect_server, stack, db,
                                                              new_project):
    project_id, owner = new_project()
    active = await provision_session(project_id, owner)
    session_id = uuid.UUID(active["id"])
    assert _running(stack.runtime, session_id)

    ended = await stop_session(session_id)
    assert ended["status"] == "ended" and ended["ended_at"] is not None
    row = get_session(db, session_id)
    assert row.status == "ended" and row.token_jti is None and row.ended_at is not None
    assert stack.runtime.list({LABEL_SESSION_ID: str(session_id)}) == []

    again = await stop_session(session_id)  # idempotent
    assert again["status"] == "ended" and again["ended_at"] == ended["ended_at"]


async def test_stop_session_of_a_session_still_creating(prefect_server, configured, db,
                                                        new_project):
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "process")
    ended = await stop_session(session.id)
    assert ended["status"] == "ended"
    with pytest.raises(SessionNotLive):
        await provision_session(project_id, owner, session_id=session.id)


# -- the catalogue -------------------------------------------------------------------------------


def test_the_catalogue_names_every_flow():
    assert [workflow.name for workflow in WORKFLOWS] == [
        "provision-session", "stop-session", "build-snapshot", "bulk-generate", "rollout-flag",
        "cleanup", "adopt-legacy"]
    assert by_name("cleanup").schedule == "* * * * *"
    for workflow in WORKFLOWS:
        if importlib.util.find_spec(workflow.module) is None:
            continue  # written by another part of the tree
        assert workflow.load().name == workflow.name
    with pytest.raises(KeyError) as missing:
        by_name("no-such-flow")
    assert isinstance(missing.value, UnknownWorkflow)
    assert "provision-session" in str(missing.value)
