"""End to end on loopback: RPC commit → gateway → agent (process runtime) → bytes on disk.

Real PostgreSQL, the real service app under uvicorn, the real agent as a subprocess.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from orchestrator.app import create_app
from velocity.db import Actor
from velocity.files import FileClient
from velocity.runtimes import ProcessRuntime
from velocity.settings import Settings

from .helpers import wait_for
from .preview import (
    SITE,
    agent_status,
    check_every_kind_of_change_reaches_disk,
    database_tree,
    disk_tree,
    start_preview,
    wait_until_in_sync,
    wait_until_ready,
)
from .servers import free_port, start_server


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    """The service on a fixed port (so it can be killed and restarted) and a process runtime."""
    home = tmp_path_factory.mktemp("edit-path")
    port = free_port()
    settings = Settings(home=home, database_url=database_url, storage=f"local://{home / 'store'}",
                        public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings)
    state = {"server": start_server(app, port)}
    runtime_root = home / "runtimes"
    runtime = ProcessRuntime(runtime_root)

    def restart_gateway() -> None:
        state["server"].stop()
        state["server"] = start_server(create_app(settings), port)

    yield {"settings": settings, "store": app.state.store, "runtime": runtime,
           "runtime_root": runtime_root, "restart_gateway": restart_gateway, "state": state}
    for container in runtime.list():
        runtime.stop(container.container_id, timeout=5)
    state["server"].stop()


@pytest.fixture
def service(db):
    return FileClient(db, Actor.service())


@pytest.fixture
def preview(db, stack, new_project, service):
    project_id, owner = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in SITE.items()])
    started = start_preview(db, stack["store"], stack["settings"], stack["runtime"],
                            stack["runtime_root"], project_id, owner)
    wait_until_ready(db, started, stack["runtime"])
    yield started
    stack["runtime"].stop(started.container.container_id, timeout=5)


def test_hydrate_then_every_kind_of_change_reaches_disk(db, preview, service):
    check_every_kind_of_change_reaches_disk(db, service, preview)
    assert agent_status(db, preview.session_id)["dev_server"] == "running"


def test_nothing_is_lost_across_a_gateway_restart_mid_stream(db, stack, preview, service):
    project = preview.project_id
    stop = threading.Event()
    written = []

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            service.upsert(project, f"stream/f{n % 7}.txt", f"write {n}")
            written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(written) > 20, message="writes before the restart")
        stack["restart_gateway"]()  # the agent's socket drops; writes keep committing
        wait_for(lambda: len(written) > 60, message="writes after the restart")
    finally:
        stop.set()
        writer.join(timeout=30)
    wait_until_in_sync(db, preview, timeout=30)


def test_events_written_while_the_agent_is_away_arrive_when_it_returns(db, stack, preview,
                                                                       service):
    runtime = stack["runtime"]
    runtime.stop(preview.container.container_id, timeout=5)  # the agent is gone
    for n in range(30):
        service.upsert(preview.project_id, "offline.txt", f"written while away {n}")
    service.delete(preview.project_id, "index.html")

    # A new agent for the same session: hydrates from the snapshot, replays, catches up.
    restarted = runtime.start(preview.spec)
    try:
        project_dir = stack["runtime_root"] / restarted.container_id / "project"
        wait_for(lambda: disk_tree(project_dir) == database_tree(db, preview.project_id),
                 timeout=30, message="the restarted agent to catch up")
        assert (project_dir / "offline.txt").read_text() == "written while away 29"
    finally:
        runtime.stop(restarted.container_id, timeout=5)


def test_the_agent_environment_holds_no_secret(db, stack, preview):
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    environments = []
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"SESSION_ID={preview.session_id}".encode() in raw:
            environments.append(dict(item.split(b"=", 1) for item in raw.split(b"\0") if item))
    assert environments, "the agent process was not found"
    for environment in environments:
        names = {name.decode() for name in environment}
        assert names <= {"PROJECT_ID", "SESSION_ID", "SNAPSHOT_URL", "REALTIME_URL",
                         "REALTIME_TOKEN", "PATH", "HOME", "LANG", "PROJECT_DIR", "PORT",
                         "HEALTH_PORT", "DEV_COMMAND"}, names
        values = b" ".join(environment.values())
        assert b"postgresql://" not in values and b"password=" not in values
        assert stack["settings"].storage_secret().encode() not in values
        assert stack["settings"].user_jwt_secret().encode() not in values


def test_stopping_the_session_closes_the_channel_and_the_agent_stops(db, stack, preview):
    with db.transaction() as conn:
        conn.execute("UPDATE preview_sessions SET status = 'ended', ended_at = now()"
                     " WHERE id = %s", (preview.session_id,))
    runtime = stack["runtime"]
    wait_for(lambda: runtime.status(preview.container.container_id).state == "exited",
             timeout=20, message="the agent to exit after its session ended")
