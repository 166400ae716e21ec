"""Small helpers the tests share: waiting on conditions, and fingerprints of stored state."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from velocity.db import Database

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01,
             message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def file_state(db: Database, project_id) -> tuple:
    """Every file version and event of a project: equal before and after means unchanged."""
    with db.transaction() as conn:
        files = conn.execute(
            "SELECT file_path, version, is_current_version, is_deleted, content_hash"
            " FROM project_files WHERE project_id = %s ORDER BY file_path, version",
            (project_id,)).fetchall()
        events = conn.execute(
            "SELECT seq, type FROM file_events WHERE project_id = %s ORDER BY seq",
            (project_id,)).fetchall()
        (last_seq,) = conn.execute(
            "SELECT last_event_seq FROM projects WHERE id = %s", (project_id,)).fetchone()  # type: ignore[misc]
    return tuple(files), tuple(events), last_seq


def require_tool(command: str, why: str) -> str:
    """The path of `command`; without it the test is skipped, or fails under
    VELOCITY_TEST_STRICT=1 (CI, where scripts/test-tools installs it)."""
    path = shutil.which(command)
    if path:
        return path
    message = f"{command} is not installed ({why}); scripts/test-tools installs it as root"
    if os.environ.get("VELOCITY_TEST_STRICT") == "1":
        pytest.fail(message)
    pytest.skip(message)
