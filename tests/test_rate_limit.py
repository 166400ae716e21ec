"""The write rate limit: per user and project, trips with a retry-after, then recovers."""

from __future__ import annotations

import time

import pytest

from velocity.db import Actor
from velocity.errors import RateLimited
from velocity.files import FileClient

from .helpers import file_state, wait_for


@pytest.fixture
def tight_limit(db):
    with db.transaction() as conn:
        conn.execute("UPDATE internal.config SET rate_limit_burst = 5, rate_limit_per_second = 10")
    yield
    with db.transaction() as conn:
        conn.execute("UPDATE internal.config SET rate_limit_burst = 100,"
                     " rate_limit_per_second = 20")


def test_the_limit_trips_and_recovers(db, new_project, new_user, tight_limit):
    project_id, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    for n in range(5):
        files.upsert(project_id, "a.txt", str(n))
    before = file_state(db, project_id)
    with pytest.raises(RateLimited) as limited:
        files.upsert(project_id, "a.txt", "over")
    assert 0 < limited.value.retry_after_seconds <= 0.1
    assert "retry after" in str(limited.value)
    assert file_state(db, project_id) == before

    # Another project of the same user, another user of the same project, and the service
    # are not throttled by this bucket.
    other_project, _ = new_project(owner=owner)
    files.upsert(other_project, "b.txt", "fine")
    editor = new_user("editor")
    with db.transaction() as conn:
        conn.execute("INSERT INTO project_members (project_id, user_id, role)"
                     " VALUES (%s, %s, 'editor')", (project_id, editor))
    FileClient(db, Actor.user(editor)).upsert(project_id, "editor.txt", "fine")
    FileClient(db, Actor.service()).upsert(project_id, "service.txt", "fine")

    started = time.monotonic()
    wait_for(lambda: _try(files, project_id), timeout=5, message="the bucket to refill")
    assert time.monotonic() - started < 2


def _try(files: FileClient, project_id) -> bool:
    try:
        files.upsert(project_id, "a.txt", f"after {time.monotonic()}")
    except RateLimited:
        return False
    return True


def test_within_the_limit_nothing_is_refused(db, new_project):
    project_id, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    for n in range(100):  # the default burst
        files.upsert(project_id, "a.txt", str(n))
