"""Bulk generation: packaged templates, the task through `.fn`, and the flow on a real Prefect
server — one bulk:apply per generation, nothing written for bad input."""

from __future__ import annotations

import json
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.logging import disable_run_logger

from flows.generation import bulk_generate
from tasks.generation import bulk_generate_files
from velocity.db import Database
from velocity.errors import InvalidInput, NotFound
from velocity.generation import ensure_project_files, template_files, template_names

from .helpers import file_state
from .preview import database_tree


def _events(db: Database, project_id: uuid.UUID) -> list[str]:
    with db.transaction() as conn:
        rows = conn.execute("SELECT type FROM file_events WHERE project_id = %s ORDER BY seq",
                            (project_id,)).fetchall()
    return [row[0] for row in rows]


def _as_tree(files: list[dict[str, str]]) -> dict[str, bytes]:
    return {item["file_path"]: item["content"].encode() for item in files}


def test_the_packaged_templates():
    assert {"static", "vite-react"} <= set(template_names())
    static = {item["file_path"] for item in template_files("static")}
    assert static == {"index.html", "style.css", "main.js"}
    vite = {item["file_path"]: item["content"] for item in template_files("vite-react")}
    assert set(vite) == {"package.json", "vite.config.js", "index.html", "src/main.jsx",
                         "src/App.jsx", "src/index.css"}
    assert json.loads(vite["package.json"])["scripts"]["dev"] == "vite"
    assert "/src/main.jsx" in vite["index.html"]
    with pytest.raises(InvalidInput) as unknown:
        template_files("no-such-template")
    assert "static" in unknown.value.message and "vite-react" in unknown.value.message


async def test_the_task_through_fn(configured, db, new_project):
    project_id, _ = new_project()
    with disable_run_logger():
        result = await bulk_generate_files.fn(project_id, template="static")
        again = await bulk_generate_files.fn(project_id, template="static")
    assert result.changed == 3 and result.seq is not None
    assert again.changed == 0 and again.seq is None  # unchanged content: no version, no event
    assert _events(db, project_id) == ["bulk:apply"]


def test_ensure_project_files_only_fills_an_empty_project(db, new_project):
    project_id, _ = new_project()
    assert ensure_project_files(db, project_id) is not None
    assert ensure_project_files(db, project_id) is None
    assert database_tree(db, project_id) == _as_tree(template_files("static"))
    with pytest.raises(NotFound):
        ensure_project_files(db, uuid.uuid4())


async def test_the_flow_generates_a_template(prefect_server, configured, db, new_project):
    project_id, _ = new_project()
    result = await bulk_generate(project_id, template="vite-react")
    assert result["changed"] == 6
    assert database_tree(db, project_id) == _as_tree(template_files("vite-react"))
    assert _events(db, project_id) == ["bulk:apply"]
    async with get_client() as client:  # raw: read_artifacts sends nulls the server refuses
        response = await client.request("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"bulk-generate-{project_id}"]}}, "limit": 10})
    artifacts = response.json()
    assert artifacts and "6 changed" in (artifacts[0]["description"] or "")


async def test_the_flow_writes_supplied_files(prefect_server, configured, db, new_project):
    project_id, _ = new_project()
    files = [{"file_path": f"pages/p{n}.html", "content": f"<p>{n}</p>"} for n in range(20)]
    result = await bulk_generate(project_id, files=files)
    assert result["changed"] == 20
    assert database_tree(db, project_id) == _as_tree(files)
    assert _events(db, project_id) == ["bulk:apply"]


@pytest.mark.parametrize("arguments", [
    {"template": "static", "files": [{"file_path": "a.txt", "content": "a"}]},
    {},
    {"template": "no-such-template"},
    {"files": []},
    {"files": [{"file_path": "../escape.txt", "content": "x"}]},
], ids=["both", "neither", "unknown-template", "no-files", "bad-path"])
async def test_bad_input_fails_and_writes_nothing(prefect_server, configured, db, new_project,
                                                  arguments):
    project_id, _ = new_project()
    before = file_state(db, project_id)
    with pytest.raises(InvalidInput):
        await bulk_generate(project_id, **arguments)
    assert file_state(db, project_id) == before
