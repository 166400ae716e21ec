"""The cleanup flow removes exactly what it should: dead sessions, orphaned process containers,
old unused snapshots and old events no reader needs; and nothing else. Real PostgreSQL, real
subprocess containers, a real local store, the shared Prefect server. Rows are made old by
moving their timestamps back."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
from prefect.logging import disable_run_logger

from deployments import manifest
from flows.catalogue import CLEANUP
from flows.cleanup import cleanup
from tasks.cleanup import end_dead_sessions, prune_events
from velocity.db import Actor, Database
from velocity.errors import EventsPruned
from velocity.files import FileClient
from velocity.runtimes import ContainerInfo, ContainerNotFound, ContainerSpec, ProcessRuntime
from velocity.snapshots import build_snapshot
from velocity.storage import open_store

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def runtime(configured) -> Iterator[ProcessRuntime]:
    """The process runtime under the configured home, where cleanup's get_runtime looks."""
    runtime = ProcessRuntime(configured.home / "runtimes" / "process", agent_command=SLEEPER)
    yield runtime
    for info in runtime.list():
        runtime.remove(info.container_id)


def start_container(runtime: ProcessRuntime, session_id, project_id) -> ContainerInfo:
    env = {"PROJECT_ID": str(project_id), "SESSION_ID": str(session_id),
           "SNAPSHOT_URL": "http://127.0.0.1:9/unused.zip",
           "REALTIME_URL": "ws://127.0.0.1:9/realtime/v1/websocket", "REALTIME_TOKEN": "unused"}
    return runtime.start(ContainerSpec(session_id=str(session_id), project_id=str(project_id),
                                       env=env))


def add_session(db: Database, user, project, status: str, *, container: str | None = None,
                created: str = "0", heartbeat: str | None = "0", expires: str = "1 hour",
                applied_seq: int | None = None, snapshot=None) -> uuid.UUID:
    """A session row; times are intervals from now (negative: in the past)."""
    with db.transaction() as conn:
        (session_id,) = conn.execute(
            "INSERT INTO preview_sessions (user_id, project_id, status, runtime, container_id,"
            " created_at, heartbeat_at, expires_at, applied_seq, snapshot_id, token_jti,"
            " ended_at) VALUES (%s, %s, %s, 'process', %s, now() + %s::interval,"
            " now() + %s::interval, now() + %s::interval, %s, %s, %s,"
            " CASE WHEN %s = 'ended' THEN now() END) RETURNING id",
            (user, project, status, container, created, heartbeat, expires, applied_seq,
             snapshot, uuid.uuid4().hex, status)).fetchone()
    return session_id


def set_container(db: Database, session_id, container_id: str) -> None:
    with db.transaction() as conn:
        conn.execute("UPDATE preview_sessions SET container_id = %s WHERE id = %s",
                     (container_id, session_id))


def session(db: Database, session_id) -> tuple:
    with db.transaction() as conn:
        return conn.execute("SELECT status, ended_at IS NOT NULL, token_jti FROM preview_sessions"
                            " WHERE id = %s", (session_id,)).fetchone()


def write(db: Database, project, count: int, prefix: str = "f") -> None:
    files = FileClient(db, Actor.service())
    for n in range(count):
        files.upsert(project, f"{prefix}{n}.txt", f"{prefix} {n} {uuid.uuid4().hex}")


def make_old(db: Database, table: str, where: str, args: tuple, age: str) -> None:
    column = {"file_events": "created_at", "project_snapshots": "last_used_at"}[table]
    with db.transaction() as conn:
        conn.execute(f"UPDATE {table} SET {column} = now() - %s::interval WHERE {where}",
                     (age, *args))


def snapshot_ids(db: Database, project) -> set:
    with db.transaction() as conn:
        rows = conn.execute("SELECT id FROM project_snapshots WHERE project_id = %s",
                            (project,)).fetchall()
    return {row[0] for row in rows}


def event_seqs(db: Database, project) -> list[int]:
    with db.transaction() as conn:
        rows = conn.execute("SELECT seq FROM file_events WHERE project_id = %s ORDER BY seq",
                            (project,)).fetchall()
    return [row[0] for row in rows]


def pruned_through(db: Database, project) -> int:
    with db.transaction() as conn:
        return conn.execute("SELECT pruned_through_seq FROM projects WHERE id = %s",
                            (project,)).fetchone()[0]


def test_cleanup_removes_exactly_what_it_should(prefect_server, configured, db, new_user,
                                                new_project, runtime):
    store = open_store()
    owner = new_user("owner")
    sessions_project = new_project(owner)[0]

    # (a) sessions: two dead with containers, one stuck creating, two healthy with containers.
    expired = add_session(db, new_user(), sessions_project, "active", expires="-1 minute")
    silent = add_session(db, new_user(), sessions_project, "active", heartbeat="-10 minutes")
    stuck = add_session(db, new_user(), sessions_project, "creating", created="-20 minutes",
                        heartbeat=None)
    starting = add_session(db, new_user(), sessions_project, "creating", heartbeat=None)
    expired_box = start_container(runtime, expired, sessions_project)
    silent_box = start_container(runtime, silent, sessions_project)
    starting_box = start_container(runtime, starting, sessions_project)
    set_container(db, expired, expired_box.container_id)
    set_container(db, silent, silent_box.container_id)
    set_container(db, starting, starting_box.container_id)

    # (c) snapshots: project A has four, B one; all but A's third are a day old or more.
    project_a, project_b = new_project(owner)[0], new_project(owner)[0]
    built = []
    for n in range(4):
        write(db, project_a, 1, prefix=f"a{n}-")
        built.append(build_snapshot(db, store, project_a))
    used, unused, recent, latest_a = (snapshot.snapshot_id for snapshot in built)
    write(db, project_b, 2)
    latest_b = build_snapshot(db, store, project_b).snapshot_id
    make_old(db, "project_snapshots", "id = ANY(%s)", ([used, unused, latest_a, latest_b],),
             "2 days")

    # (d) events: E is read by a live session at seq 4 and has a snapshot at 6; every event
    # is old. F has no session, a snapshot at 5, and only its first three events are old.
    # G's live session knows no seq yet (still creating, no snapshot): nothing of G goes.
    project_e, project_f, project_g = (new_project(owner)[0] for _ in range(3))
    write(db, project_e, 6)
    snapshot_e = build_snapshot(db, store, project_e)  # watermark 6, snapshot:ready is 7
    write(db, project_e, 3, prefix="later")  # 8..10
    write(db, project_f, 5)
    build_snapshot(db, store, project_f)  # watermark 5, snapshot:ready is 6
    write(db, project_f, 2, prefix="later")  # 7, 8
    write(db, project_g, 4)
    make_old(db, "file_events", "project_id = %s", (project_e,), "8 days")
    make_old(db, "file_events", "project_id = %s AND seq <= 3", (project_f,), "8 days")
    make_old(db, "file_events", "project_id = %s", (project_g,), "8 days")
    reader = add_session(db, new_user(), project_e, "active", applied_seq=4,
                         snapshot=snapshot_e.snapshot_id)
    reader_box = start_container(runtime, reader, project_e)
    set_container(db, reader, reader_box.container_id)
    snapshot_user = add_session(db, new_user(), project_a, "active", applied_seq=0,
                                snapshot=used)
    add_session(db, new_user(), project_g, "creating", heartbeat=None)

    # (b) containers: one of an ended session, one of a session that never existed.
    ended = add_session(db, new_user(), sessions_project, "ended")
    ended_box = start_container(runtime, ended, sessions_project)
    stranger_box = start_container(runtime, uuid.uuid4(), sessions_project)

    summary = cleanup()

    assert session(db, expired)[:2] == ("ended", True) and session(db, expired)[2] is None
    assert session(db, silent)[:2] == ("ended", True) and session(db, silent)[2] is None
    assert session(db, stuck)[:2] == ("ended", True)
    for live in (starting, reader, snapshot_user):
        assert session(db, live)[0] in ("creating", "active") and session(db, live)[2]
    containers = {info.container_id for info in runtime.list()}
    assert containers == {starting_box.container_id, reader_box.container_id}
    for gone in (expired_box, silent_box, ended_box, stranger_box):
        with pytest.raises(ContainerNotFound):
            runtime.status(gone.container_id)
    assert runtime.status(reader_box.container_id).state == "running"

    assert snapshot_ids(db, project_a) == {used, recent, latest_a}
    assert snapshot_ids(db, project_b) == {latest_b}
    assert not store.exists(built[1].storage_key) and not store.exists(built[1].manifest_key)
    for kept in (built[0], built[2], built[3]):
        assert store.exists(kept.storage_key) and store.exists(kept.manifest_key)

    assert event_seqs(db, project_e) == [5, 6, 7, 8, 9, 10] and pruned_through(db, project_e) == 4
    assert event_seqs(db, project_f) == [4, 5, 6, 7, 8] and pruned_through(db, project_f) == 3
    assert event_seqs(db, project_g) == [1, 2, 3, 4] and pruned_through(db, project_g) == 0
    reader_client = FileClient(db, Actor.service())
    with pytest.raises(EventsPruned):
        reader_client.events_since(project_e, 3)
    assert [event.seq for event in reader_client.events_since(project_e, 4)] == [
        5, 6, 7, 8, 9, 10]

    assert summary == {
        "failed_parts": 0,
        "sessions_ended": 3, "sessions_expired": 1, "sessions_silent": 1,
        "sessions_stuck_creating": 1, "session_containers_stopped": 2,
        "containers_checked": 4, "orphaned_containers_removed": 2,
        "snapshots_deleted": 1, "snapshot_bytes_freed": built[1].bytes,
        "events_pruned": 7, "projects_pruned": 2,
    }
    again = cleanup()
    assert {key: value for key, value in again.items() if value} == {"containers_checked": 2}


def test_a_session_on_an_unknown_runtime_still_ends(configured, db, new_user, new_project):
    project = new_project()[0]
    dead = add_session(db, new_user(), project, "active", expires="-1 second")
    with db.transaction() as conn:
        conn.execute("UPDATE preview_sessions SET runtime = 'no-such-runtime',"
                     " container_id = 'c-1' WHERE id = %s", (dead,))
    with disable_run_logger():
        result = end_dead_sessions.fn()
    assert session(db, dead)[0] == "ended"
    assert result.expired >= 1 and result.containers_stopped == 0
    assert any("no-such-runtime" in failure for failure in result.stop_failures)


def test_a_wholly_old_log_is_pruned_and_goes_on_after_it(configured, db, new_project):
    project = new_project()[0]
    write(db, project, 3)
    make_old(db, "file_events", "project_id = %s", (project,), "30 days")
    with disable_run_logger():
        first = prune_events.fn()
        second = prune_events.fn()
    assert first.events >= 3 and second.events == 0
    assert event_seqs(db, project) == [] and pruned_through(db, project) == 3
    write(db, project, 1)  # the log goes on after a prune: seq 4, readable from 3
    assert [event.seq for event in FileClient(db, Actor.service()).events_since(project, 3)] == [4]


def test_prefect_yaml_is_the_catalogue_with_cleanup_every_minute():
    assert manifest.PREFECT_YAML.read_text() == manifest.render()
    deployments = {entry["name"]: entry for entry in manifest.manifest()["deployments"]}
    assert deployments["cleanup"]["entrypoint"] == "flows/cleanup.py:cleanup"
    assert deployments["cleanup"]["schedules"][0]["cron"] == CLEANUP.schedule == "* * * * *"
