"""The event log: gap-free per-project seq in commit order, small NOTIFY payloads, replay."""

from __future__ import annotations

import threading

import psycopg
import pytest

from velocity.db import Actor
from velocity.errors import EventsPruned
from velocity.files import FileClient

from .helpers import wait_for


def listen(database_url: str):
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute("LISTEN velocity_file_events")
    return conn


def drain(conn, count: int, timeout: float = 20.0) -> list[str]:
    received: list[str] = []

    def more() -> bool:
        for note in conn.notifies(timeout=0.2, stop_after=count - len(received)):
            received.append(note.payload)
        return len(received) >= count

    wait_for(more, timeout=timeout, interval=0, message=f"{count} notifications")
    return received


def test_concurrent_writers_get_seq_1_to_n_in_commit_order(db, database_url, new_project):
    project_id, owner = new_project()
    files = FileClient(db, Actor.service())
    listener = listen(database_url)
    writers, writes_each = 8, 25
    barrier = threading.Barrier(writers)

    def write(writer: int) -> None:
        barrier.wait()
        for n in range(writes_each):
            files.upsert(project_id, f"w{writer}/f{n % 5}.txt", f"{writer}-{n}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    total = writers * writes_each
    notes = drain(listener, total)
    listener.close()
    # NOTIFY is delivered in commit order; the seqs in that order must be exactly 1..N.
    seqs = [int(payload.split(":")[1]) for payload in notes if payload.startswith(str(project_id))]
    assert seqs == list(range(1, total + 1))
    events = files.events_since(project_id, 0, max_rows=10000)
    assert [e.seq for e in events] == list(range(1, total + 1))


def test_notify_payload_stays_small_for_a_5_mib_file(db, database_url, new_project):
    project_id, _ = new_project()
    listener = listen(database_url)
    FileClient(db, Actor.service()).upsert(project_id, "big.txt", "x" * (5 * 1024 * 1024))
    (payload,) = drain(listener, 1)
    listener.close()
    assert payload == f"{project_id}:1"
    assert len(payload.encode()) < 100


def test_events_since_replays_in_order_with_content(db, new_project):
    project_id, _ = new_project()
    files = FileClient(db, Actor.service())
    files.upsert(project_id, "a.txt", "1")
    files.upsert(project_id, "a.txt", "2")
    files.delete(project_id, "a.txt")
    events = files.events_since(project_id, 1)
    assert [(e.seq, e.type) for e in events] == [(2, "file:update"), (3, "file:delete")]
    assert events[0].payload["content"] == "2" and events[0].payload["version"] == 2
    assert events[1].payload["file_path"] == "a.txt"
    assert [e.seq for e in files.events_since(project_id, 0, max_rows=2)] == [1, 2]


def test_replay_from_before_the_retained_window_asks_for_a_resync(db, new_project):
    project_id, _ = new_project()
    files = FileClient(db, Actor.service())
    for n in range(4):
        files.upsert(project_id, "a.txt", str(n))
    with db.transaction() as conn:
        conn.execute("DELETE FROM file_events WHERE project_id = %s AND seq <= 2", (project_id,))
        conn.execute("UPDATE projects SET pruned_through_seq = 2 WHERE id = %s", (project_id,))
    with pytest.raises(EventsPruned) as pruned:
        files.events_since(project_id, 1)
    assert pruned.value.facts["oldest_retained_seq"] == 3
    assert [e.seq for e in files.events_since(project_id, 2)] == [3, 4]
