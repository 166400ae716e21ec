"""The build-snapshot flow on a real Prefect server, its tasks through `.fn`, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import psycopg
import pytest
from prefect.logging import disable_run_logger

from flows.snapshots import build_snapshot_flow
from tasks.retries import is_transient
from tasks.snapshots import build_project_snapshot, sign_snapshot_url
from velocity.db import Actor
from velocity.errors import InvalidPath, NotFound, PermissionDenied, VersionConflict
from velocity.files import FileClient
from velocity.storage import LocalStore, open_store


@pytest.fixture
def project(db, new_project):
    project_id, owner = new_project()
    FileClient(db, Actor.service()).bulk_upsert(
        project_id, [{"file_path": "index.html", "content": "<h1>hi</h1>"},
                     {"file_path": "main.js", "content": "console.log(1)"}])
    return project_id


async def test_tasks_run_through_fn(configured, project):
    with disable_run_logger():
        built = await build_project_snapshot.fn(project)
        url = await sign_snapshot_url.fn(built.storage_key, 60)
    store = open_store()
    assert isinstance(store, LocalStore) and store.exists(built.storage_key)
    assert built.files == 2 and not built.reused
    assert url.startswith(configured.public_url) and "signature=" in url


async def test_the_flow_runs_on_a_prefect_server(prefect_server, configured, project):
    first = await build_snapshot_flow(project)
    second = await build_snapshot_flow(project)
    assert second.reused and second.snapshot_id == first.snapshot_id


def test_only_transient_failures_are_retried():
    assert is_transient(psycopg.OperationalError("server closed the connection"))
    assert is_transient(httpx.ConnectError("refused"))
    request = httpx.Request("GET", "http://x")
    assert is_transient(httpx.HTTPStatusError("", request=request,
                                              response=httpx.Response(503, request=request)))
    assert not is_transient(httpx.HTTPStatusError("", request=request,
                                                  response=httpx.Response(404, request=request)))
    for error in (InvalidPath("bad"), PermissionDenied("no"), NotFound("gone"),
                  VersionConflict("stale", current_version=2), ValueError("bug")):
        assert not is_transient(error)


def test_the_cli_prints_the_snapshot_with_a_url(configured, project, database_url):
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "snapshot", "build", str(project), "--json"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"snapshot_id", "watermark", "files", "bytes", "sha256", "reused",
                         "url", "seconds"}
    assert data["files"] == 2 and data["watermark"] == 1
    bad = subprocess.run([sys.executable, "-m", "orchestrator", "snapshot", "build", "nope"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert bad.returncode == 1 and "not a project id" in bad.stderr
