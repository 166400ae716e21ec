"""The adopt-legacy flow on a real Prefect server: the same steps as `velocity adopt`, one
retryable task per project, against a real legacy database and target."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prefect.logging import disable_run_logger

from flows.adoption import AdoptionIncomplete, adopt_legacy
from flows.catalogue import ADOPT_LEGACY
from tasks.adoption import adopt_legacy_project, survey_legacy_sources
from velocity import accounts
from velocity.adoption import AdoptionOptions
from velocity.db import Actor, Database
from velocity.errors import InvalidInput
from velocity.files import FileClient

from .legacy_sources import FRONTEND_SCHEMA, drop_database, new_database


@pytest.fixture(scope="module")
def owner(db: Database) -> uuid.UUID:
    return accounts.create_user(db, f"owner-{uuid.uuid4().hex[:8]}@example.test")


@pytest.fixture(scope="module")
def legacy(pg_server_url: str, owner: uuid.UUID) -> Iterator[tuple[str, list[uuid.UUID]]]:
    """A frontend-variant source with two projects the target lacks, owned by nobody it knows."""
    url = new_database(pg_server_url, "flow")
    projects = sorted([uuid.uuid4(), uuid.uuid4()])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FRONTEND_SCHEMA)
        for number, project in enumerate(projects):
            conn.execute("INSERT INTO project_files (project_id, path, type, content)"
                         " VALUES (%s, 'index.html', 'html', %s), (%s, 'app.js', NULL, 'go()')",
                         (project, f"<h1>{number}</h1>", project))
    yield url, projects
    drop_database(pg_server_url, url)


async def test_the_tasks_run_through_fn(configured, legacy):
    url, projects = legacy
    with disable_run_logger():
        found = await survey_legacy_sources.fn(url, None, None)
        report = await adopt_legacy_project.fn(url, None, AdoptionOptions(dry_run=True),
                                               projects[0], None)
        with pytest.raises(InvalidInput, match="in neither source"):
            await survey_legacy_sources.fn(url, None, [uuid.uuid4()])
    assert (found.variant, found.project_ids) == ("frontend", projects)
    assert (report.status, report.reason) == ("skipped", (
        "the project is not in the target and the source names no owner; pass --owner "
        "USER_ID to create it"))


async def test_the_flow_adopts_each_project_and_a_rerun_adds_nothing(
        prefect_server, configured, db, legacy, owner):
    assert ADOPT_LEGACY.load() is adopt_legacy
    url, projects = legacy
    dry = await adopt_legacy(source_database_url=url, owner=owner, dry_run=True)
    assert dry["batch_id"] is None and dry["totals"]["files"] == 4
    assert [p["status"] for p in dry["projects"]] == ["created", "created"]
    with db.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM projects WHERE id = ANY(%s)",
                            (projects,)).fetchone() == (0,), "a dry run creates nothing"
    report = await adopt_legacy(source_database_url=url, owner=owner)
    assert [(p["project_id"], p["status"], p["files"], p["seq"]) for p in report["projects"]] == [
        (str(project), "created", 2, 1) for project in projects]
    for number, project in enumerate(projects):
        files = FileClient(db, Actor.user(owner)).list_current(project)
        assert [(f.file_path, f.file_type, f.content) for f in files] == [
            ("app.js", "javascript", "go()"), ("index.html", "html", f"<h1>{number}</h1>")]
    again = await adopt_legacy(source_database_url=url, owner=owner)
    assert [p["status"] for p in again["projects"]] == ["nothing_new", "nothing_new"]
    with db.transaction() as conn:
        assert conn.execute("SELECT status FROM internal.adoption_batches WHERE id = %s",
                            (report["batch_id"],)).fetchone() == ("done",)


async def test_a_failing_project_fails_the_flow_after_the_others(
        prefect_server, configured, db, legacy, owner, tmp_path: Path):
    """A bucket object that cannot be read fails its project's task; the others are adopted,
    the batch is recorded `failed`, and the flow run fails saying which project."""
    url, projects = legacy
    broken = uuid.uuid4()
    (tmp_path / str(broken)).mkdir()
    (tmp_path / str(broken) / "gone.txt").symlink_to(tmp_path / "nowhere")
    with pytest.raises(AdoptionIncomplete, match=f"1 project\\(s\\) failed: {broken}"):
        await adopt_legacy(source_database_url=url, source_storage_url=f"local://{tmp_path}",
                           owner=owner, project_ids=[*projects, broken])
    with db.transaction() as conn:
        (status, report) = conn.execute(
            "SELECT status, report FROM internal.adoption_batches ORDER BY created_at DESC"
            " LIMIT 1").fetchone()  # type: ignore[misc]
    assert status == "failed"
    assert [(p["project_id"], p["status"]) for p in report["projects"]] == [
        (str(projects[0]), "nothing_new"), (str(projects[1]), "nothing_new"),
        (str(broken), "failed")]
    assert "gone.txt" in report["projects"][2]["reason"]
