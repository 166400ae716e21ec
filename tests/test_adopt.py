"""`velocity adopt` against real legacy sources: PostgreSQL databases of each seed variant and
the `project-files` bucket on moto's S3 server, into a real target database and store."""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from velocity import accounts
from velocity.adoption import (
    AdoptionOptions,
    AdoptionReport,
    LegacySources,
    ProjectReport,
    UndoRefused,
    adopt,
    undo_batch,
)
from velocity.adoption.report import Conflict, FixedPath, HashMismatch, RejectedPath
from velocity.adoption.sources import LegacyDatabase
from velocity.db import Actor, Database
from velocity.errors import InvalidInput, NotFound, VersionConflict
from velocity.files import FileClient
from velocity.settings import Settings
from velocity.storage import LocalStore, ObjectStore, store_from_url

from .legacy_sources import (
    JPEG,
    PNG,
    FrontendSource,
    People,
    RichSource,
    RlsSource,
    build_frontend_source,
    build_rich_source,
    build_rls_source,
    database_fingerprint,
    drop_database,
    fill_bucket,
    moto_bucket,
    new_database,
    sha256,
    store_fingerprint,
    target_fingerprint,
)


@pytest.fixture(scope="module")
def people(db: Database) -> People:
    def user(label: str) -> uuid.UUID:
        return accounts.create_user(db, f"{label}-{uuid.uuid4().hex[:8]}@example.test")

    return People(alice=user("alice"), bob=user("bob"), ghost=uuid.uuid4())


@pytest.fixture(scope="module")
def bucket_url() -> Iterator[str]:
    with moto_bucket() as url:
        yield url


@pytest.fixture(scope="module")
def legacy_bucket(bucket_url: str, tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    return store_from_url(bucket_url, Settings(home=tmp_path_factory.mktemp("bucket-home")))


@pytest.fixture(scope="module")
def target_store(tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    return LocalStore(tmp_path_factory.mktemp("target-store"), "http://127.0.0.1:1",
                      "adoption-test-signing-secret")


@pytest.fixture(scope="module")
def rich(pg_server_url: str, db: Database, people: People,
         legacy_bucket: ObjectStore) -> Iterator[RichSource]:
    existing = accounts.create_project(db, "Shop", people.alice)
    FileClient(db, Actor.service()).bulk_upsert(existing, [
        {"file_path": "index.html", "content": "<p>same</p>"},
        {"file_path": "main.js", "content": "modern()"}])
    source = build_rich_source(pg_server_url, people, existing)
    fill_bucket(legacy_bucket, source)
    yield source
    drop_database(pg_server_url, source.url)


@pytest.fixture(scope="module")
def rls_bucket(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    """The RLS source's bucket: a directory, read through `--from-storage local://`."""
    return LocalStore(tmp_path_factory.mktemp("rls-bucket"), "http://127.0.0.1:1", "unused")


@pytest.fixture(scope="module")
def rls(pg_server_url: str, rls_bucket: LocalStore) -> Iterator[RlsSource]:
    source = build_rls_source(pg_server_url, rls_bucket)
    yield source
    drop_database(pg_server_url, source.url)


@pytest.fixture(scope="module")
def frontend(pg_server_url: str, db: Database, people: People) -> Iterator[FrontendSource]:
    project = accounts.create_project(db, "Editor app", people.alice)
    source = build_frontend_source(pg_server_url, people, project)
    yield source
    drop_database(pg_server_url, source.url)


def comparable(report: AdoptionReport) -> dict:
    """The report without what only a real run has (batch id, event seqs)."""
    data = report.model_dump(mode="json", exclude={"batch_id", "dry_run"})
    for project in data["projects"]:
        project.pop("seq")
    return data


def assert_same_report(actual: AdoptionReport | dict, expected: AdoptionReport) -> None:
    """Equal reports, or a line diff of their JSON saying where they part."""
    got = actual if isinstance(actual, dict) else actual.model_dump(mode="json")
    want = expected.model_dump(mode="json")
    if got != want:
        diff = difflib.unified_diff(json.dumps(want, indent=1).splitlines(),
                                    json.dumps(got, indent=1).splitlines(), "expected",
                                    "actual", lineterm="")
        pytest.fail("reports differ:\n" + "\n".join(diff))


def text_bytes(*texts: str) -> int:
    return sum(len(text.encode()) for text in texts)


def expected_rich_report(rich: RichSource, people: People) -> AdoptionReport:
    ids = rich.ids
    projects = [
        ProjectReport(
            project_id=rich.created, status="created", files=5, versions=9,
            bytes=len(PNG) + text_bytes("<h1>old</h1>", "<h1>new</h1>", "same",
                                        "export default 1", "export default 2",
                                        "export default 3", "a{}", "b{}"),
            directories=1, authors_defaulted=2,
            conflicts=[
                Conflict(kind="duplicate_current", path="index.html", detail=(
                    f"2 rows are current; kept row {ids['index_new']}, the newest; rows "
                    f"{ids['index_old']} are kept as older versions")),
                Conflict(kind="no_current", path="styles/app.css", detail=(
                    f"no row is flagged current; the newest, row {ids['css2']}, is made "
                    "current")),
            ],
            rejected=[
                RejectedPath(path="../secret.txt", reason="dot_segment", origin="database"),
                RejectedPath(path="/README.md", reason="absolute", origin="database",
                             fixable_to="README.md"),
            ],
            hash_mismatches=[HashMismatch(path="src/App.tsx", source_ref=ids["app3"],
                                          stored="deadbeef",
                                          computed=sha256("export default 3"))]),
        ProjectReport(
            project_id=rich.existing, status="imported", files=1, versions=1,
            bytes=text_bytes("export const lib = 1"), already_present=1,
            conflicts=[
                Conflict(kind="storage_only", path="extra.txt", detail=(
                    f"object {rich.existing}/extra.txt is only in the bucket; the database "
                    "has this project, so it wins and the object is not imported")),
                Conflict(kind="storage_differs", path="lib.js", detail=(
                    f"object {rich.existing}/lib.js differs from the database's current "
                    "content; the database wins")),
                Conflict(kind="target_differs", path="main.js", detail=(
                    "the target's version 1 is different content; the target is kept")),
            ]),
        ProjectReport(
            project_id=rich.bucket_only, status="created", files=2, versions=2,
            bytes=len(PNG) + text_bytes("<h1>from the bucket</h1>"), from_storage=2,
            authors_defaulted=2,
            rejected=[RejectedPath(path="bad\\name.txt", reason="backslash", origin="storage",
                                   fixable_to="bad/name.txt")]),
    ]
    return AdoptionReport(dry_run=True, variant="rich", stray_keys=["readme.txt"],
                          projects=sorted(projects, key=lambda p: p.project_id))


def history(db: Database, project: uuid.UUID, path: str) -> list[tuple]:
    with db.transaction() as conn:
        return conn.execute(
            "SELECT f.version, f.content, f.content_hash, f.file_type, f.is_current_version,"
            " f.created_by, f.last_modified_by, f.created_at, f.storage_key, f.size_bytes,"
            " p.version FROM project_files f LEFT JOIN project_files p"
            " ON p.id = f.parent_version_id"
            " WHERE f.project_id = %s AND f.file_path = %s ORDER BY f.version",
            (project, path)).fetchall()


def events(db: Database, project: uuid.UUID) -> list[tuple]:
    with db.transaction() as conn:
        return conn.execute("SELECT seq, type, payload FROM file_events WHERE project_id = %s"
                            " ORDER BY seq", (project,)).fetchall()


def test_each_variant_is_detected_and_others_are_refused(rich, rls, frontend, pg_server_url,
                                                         database_url):
    assert LegacyDatabase(rich.url).variant == "rich"
    assert LegacyDatabase(rls.url).variant == "rls"
    assert LegacyDatabase(frontend.url).variant == "frontend"
    with pytest.raises(InvalidInput, match="already Velocity's schema"):
        LegacyDatabase(database_url)
    odd = new_database(pg_server_url, "odd")
    try:
        with pytest.raises(InvalidInput, match="no project_files table"):
            LegacyDatabase(odd)
        with psycopg.connect(odd, autocommit=True) as conn:
            conn.execute("CREATE TABLE project_files (project_id uuid, content text, name text)")
        with pytest.raises(InvalidInput, match=r"matches no known legacy variant \(columns: "
                                               r"content, name, project_id\)"):
            LegacyDatabase(odd)
    finally:
        drop_database(pg_server_url, odd)


def test_bad_input_is_refused_and_changes_nothing(db, rich, bucket_url, target_store):
    settings = Settings()
    before = target_fingerprint(db, target_store)
    with pytest.raises(InvalidInput, match="name a source"):
        LegacySources.open(None, None, settings)
    with pytest.raises(InvalidInput, match="--from-storage: .*unknown scheme 'ftp'"):
        LegacySources.open(None, "ftp://project-files", settings)
    stranger = uuid.uuid4()
    sources = LegacySources.open(rich.url, bucket_url, settings)
    with pytest.raises(InvalidInput, match=f"project\\(s\\) in neither source: {stranger}"):
        adopt(db, target_store, sources, AdoptionOptions(project_ids=[rich.created, stranger]))
    with pytest.raises(NotFound):
        undo_batch(db, target_store, uuid.uuid4())
    assert target_fingerprint(db, target_store) == before


def test_rich_source_and_bucket_dry_run_import_rerun_and_undo(
        db, people, rich, bucket_url, legacy_bucket, target_store):
    source_before = database_fingerprint(rich.url), store_fingerprint(legacy_bucket)
    target_before = target_fingerprint(db, target_store)
    sources = LegacySources.open(rich.url, bucket_url, Settings())

    dry = adopt(db, target_store, sources, AdoptionOptions(dry_run=True))
    assert_same_report(dry, expected_rich_report(rich, people))
    assert dry.batch_id is None
    assert target_fingerprint(db, target_store) == target_before, "a dry run changes nothing"

    seen: list[tuple[int, int, uuid.UUID]] = []
    real = adopt(db, target_store, sources, AdoptionOptions(),
                 on_project=lambda *step: seen.append(step))
    assert comparable(real) == comparable(dry), "the import is what the dry run reported"
    assert real.batch_id is not None
    assert [step[:2] for step in seen] == [(0, 3), (1, 3), (2, 3)]
    a, b = people.alice, people.bob

    # The created project: the legacy id, name and owner; history kept.
    with db.transaction() as conn:
        assert conn.execute("SELECT name, owner_id FROM projects WHERE id = %s",
                            (rich.created,)).fetchone() == ("Landing page", a)
    app = history(db, rich.created, "src/App.tsx")
    assert [(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[10]) for v in app] == [
        (1, "export default 1", sha256("export default 1"), "typescript", False, a, a, None),
        (2, "export default 2", sha256("export default 2"), "typescript", False, a, b, 1),
        (3, "export default 3", sha256("export default 3"), "typescript", True, a, a, 2)]
    assert [v[7].isoformat() for v in app] == [
        "2024-03-01T01:00:00+00:00", "2024-03-01T02:00:00+00:00", "2024-03-01T03:00:00+00:00"]
    assert [(v[1], v[4], v[6]) for v in history(db, rich.created, "index.html")] == [
        ("<h1>old</h1>", False, a), ("<h1>new</h1>", True, b)]
    assert [(v[0], v[1], v[4]) for v in history(db, rich.created, "notes.txt")] == [
        (1, "same", True)]
    assert [(v[1], v[4]) for v in history(db, rich.created, "styles/app.css")] == [
        ("a{}", False), ("b{}", True)]
    (logo,) = history(db, rich.created, "assets/logo.png")
    assert (logo[1], logo[2], logo[3], logo[8], logo[9]) == (
        None, sha256(PNG), "image", f"{rich.created}/assets/logo.png", len(PNG))
    assert target_store.get(f"{rich.created}/assets/logo.png") == PNG
    ((seq, kind, payload),) = events(db, rich.created)
    assert (seq, kind, payload["count"]) == (1, "bulk:apply", 5)
    assert [item["file_path"] for item in payload["files"]] == [
        "assets/logo.png", "index.html", "notes.txt", "src/App.tsx", "styles/app.css"]
    assert [item["version"] for item in payload["files"]] == [1, 2, 1, 3, 2]

    # The existing project: only the new path, in one more event; the target's files kept.
    current = {f.file_path: f.content for f in
               FileClient(db, Actor.service()).list_current(rich.existing)}
    assert current == {"index.html": "<p>same</p>", "main.js": "modern()",
                       "lib.js": "export const lib = 1"}
    assert [(e[0], e[1]) for e in events(db, rich.existing)] == [(1, "bulk:apply"),
                                                                 (2, "bulk:apply")]
    assert history(db, rich.existing, "lib.js")[0][6] == b

    # The project only the bucket had: text as content, the binary by its key.
    files = FileClient(db, Actor.service()).list_current(rich.bucket_only)
    assert [(f.file_path, f.file_type, f.content, f.storage_key) for f in files] == [
        ("img/a.png", "image", None, f"{rich.bucket_only}/img/a.png"),
        ("index.html", "html", "<h1>from the bucket</h1>", None)]
    assert target_store.get(f"{rich.bucket_only}/img/a.png") == PNG

    # Running again imports nothing new.
    imported = target_fingerprint(db, target_store)
    again = adopt(db, target_store, sources, AdoptionOptions())
    assert again.totals.files == again.totals.versions == again.totals.bytes == 0
    assert [p.status for p in again.projects] == ["nothing_new"] * 3
    assert sum(p.already_present for p in again.projects) == 5 + 2 + 2
    assert target_fingerprint(db, target_store) == imported

    # Undo, newest batch first, leaves the target as it was; undoing twice is refused.
    assert undo_batch(db, target_store, again.batch_id).projects == []
    undone = undo_batch(db, target_store, real.batch_id)
    assert {(p.project_id, p.files_removed, p.events_removed, p.project_removed)
            for p in undone.projects} == {(rich.created, 9, 1, True),
                                          (rich.existing, 1, 1, False),
                                          (rich.bucket_only, 2, 1, True)}
    assert undone.objects_removed == sorted([f"{rich.created}/assets/logo.png",
                                             f"{rich.bucket_only}/img/a.png"])
    assert target_fingerprint(db, target_store) == target_before
    with pytest.raises(InvalidInput, match="already undone"):
        undo_batch(db, target_store, real.batch_id)
    with db.transaction() as conn:
        assert conn.execute("SELECT status, report IS NOT NULL FROM internal.adoption_batches"
                            " WHERE id = %s", (real.batch_id,)).fetchone() == ("undone", True)

    assert (database_fingerprint(rich.url), store_fingerprint(legacy_bucket)) == source_before


def test_frontend_variant_with_fixed_paths(db, people, frontend, target_store):
    ids = frontend.ids
    sources = LegacySources.open(frontend.url, None, Settings())
    report = adopt(db, target_store, sources, AdoptionOptions(fix_paths=True, dry_run=True))
    assert report == AdoptionReport(dry_run=True, variant="frontend", projects=[ProjectReport(
        project_id=frontend.project, status="imported", files=4, versions=5,
        bytes=text_bytes("win()", '{"name": "app"}', "render(1)", "render(2)", "export {}"),
        directories=1, authors_defaulted=1,
        conflicts=[Conflict(kind="duplicate_current", path="src/main.tsx", detail=(
            f"2 rows are current; kept row {ids['main_new']}, the newest; rows "
            f"{ids['main_old']} are kept as older versions"))],
        rejected=[RejectedPath(path="bad\x01name.js", reason="control_character",
                               origin="database")],
        fixed_paths=[
            FixedPath(path="/src/util.ts", fixed_to="src/util.ts",
                      how=["leading slash removed"], origin="database"),
            FixedPath(path="lib\\win.js", fixed_to="lib/win.js",
                      how=["backslashes became slashes"], origin="database")])])
    real = adopt(db, target_store, sources, AdoptionOptions(fix_paths=True))
    assert comparable(real) == comparable(report)
    files = FileClient(db, Actor.user(people.alice)).list_current(frontend.project)
    assert [(f.file_path, f.file_type, f.content) for f in files] == [
        ("lib/win.js", "javascript", "win()"), ("package.json", "json", '{"name": "app"}'),
        ("src/main.tsx", "typescript", "render(2)"), ("src/util.ts", "typescript", "export {}")]
    assert [(v[1], v[6]) for v in history(db, frontend.project, "src/main.tsx")] == [
        ("render(1)", people.bob), ("render(2)", people.alice)]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "adopt", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_the_cli_adopts_the_rls_variant_and_refuses_an_undo_after_later_writes(
        db, people, rls, rls_bucket, database_url, tmp_path: Path):
    home = tmp_path / "home"
    env = {"VELOCITY_HOME": str(home), "VELOCITY_STORAGE": f"local://{home / 'storage'}",
           "VELOCITY_DATABASE_URL": database_url}
    ids, project = rls.ids, rls.project
    source_before = database_fingerprint(rls.url), store_fingerprint(rls_bucket)
    base = ("--from-database", rls.url, "--from-storage", f"local://{rls_bucket.root}",
            "--project", str(project))

    skipped = run_cli(*base, "--json", env=env)
    assert skipped.returncode == 0, skipped.stderr
    (outcome,) = json.loads(skipped.stdout)["projects"]
    assert (outcome["status"], outcome["files"]) == ("skipped", 0)
    assert outcome["reason"] == ("the project is not in the target and the source names no "
                                 "owner; pass --owner USER_ID to create it")

    dry = run_cli(*base, "--owner", str(people.alice), "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    expected = AdoptionReport(dry_run=True, variant="rls", projects=[ProjectReport(
        project_id=project, status="created", files=4, versions=7,
        bytes=text_bytes("a file", "let a = 1", "let a = 2", "one", "two-a", "two-b")
        + len(JPEG), directories=1, authors_defaulted=7,
        conflicts=[Conflict(kind="duplicate_current", path="dup.txt", detail=(
            f"2 rows are current; kept row {ids['dup2b']}, the newest; rows {ids['dup2a']} "
            "are kept as older versions"))],
        rejected=[
            RejectedPath(path="bad//path.js", reason="empty_segment", origin="database",
                         fixable_to="bad/path.js"),
            RejectedPath(path="missing.png", reason="binary_missing", origin="database"),
            RejectedPath(path="a/b.js", reason="path_conflict", origin="database",
                         detail="'a' is a file where this path needs a directory")],
        hash_mismatches=[HashMismatch(path="app.js", source_ref=ids["app2"],
                                      stored="md5:0123", computed=sha256("let a = 2"))])])
    assert json.loads(dry.stdout) == json.loads(expected.model_dump_json())

    done = run_cli(*base, "--owner", str(people.alice), env=env)
    assert done.returncode == 0, done.stderr
    found = re.search(r"batch ([0-9a-f-]{36}) \(undo:\s+velocity adopt --undo \1\)",
                      done.stdout)
    assert found and "dup.txt" in done.stdout and "missing.png" in done.stdout
    batch = found.group(1)
    with db.transaction() as conn:
        assert conn.execute("SELECT name, owner_id FROM projects WHERE id = %s",
                            (project,)).fetchone() == (f"adopted {project}", people.alice)
    assert [v[1] for v in history(db, project, "dup.txt")] == ["one", "two-a", "two-b"]
    (photo,) = history(db, project, "images/photo.jpg")
    assert (photo[3], photo[8], photo[2]) == ("image", f"{project}/images/photo.jpg",
                                              sha256(JPEG))
    assert (home / "storage" / str(project) / "images" / "photo.jpg").read_bytes() == JPEG

    # A later write by the owner: undo would leave a gap in the log, so it is refused.
    FileClient(db, Actor.user(people.alice)).upsert(project, "later.txt", "after the batch")
    after_write = target_fingerprint(db, LocalStore(home / "storage", "http://x", "s"))
    undo = run_cli("--undo", batch, env=env)
    assert undo.returncode == 1
    assert f"project {project}: 1 event(s) were written after the batch (seq 2 to 2)" \
        in undo.stderr.replace("\n", "")
    assert target_fingerprint(db, LocalStore(home / "storage", "http://x", "s")) == after_write
    with pytest.raises(UndoRefused) as refusal:
        undo_batch(db, LocalStore(home / "storage", "http://x", "s"), uuid.UUID(batch))
    assert refusal.value.facts["blocked"] == [{
        "project_id": str(project),
        "reason": "1 event(s) were written after the batch (seq 2 to 2)"}]

    bad = run_cli("--undo", "not-a-batch", env=env)
    assert bad.returncode == 1 and "--undo: 'not-a-batch' is not an id" in bad.stderr
    assert (database_fingerprint(rls.url), store_fingerprint(rls_bucket)) == source_before


def test_a_concurrent_write_fails_the_project_not_the_batch(db, people, target_store,
                                                             pg_server_url):
    """Adoption only adds paths: a path written between plan and write is a conflict."""
    from velocity.adoption.batches import open_batch, write_plan
    from velocity.adoption.planning import ProjectPlanner, TargetView

    project = accounts.create_project(db, "Racing", people.alice)
    url = new_database(pg_server_url, "race")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE project_files (id serial, project_id uuid, path text,"
                         " type text, content text)")
            conn.execute("INSERT INTO project_files (project_id, path, content)"
                         " VALUES (%s, 'race.txt', 'legacy')", (project,))
        sources = LegacySources.open(url, None, Settings())
        plan = ProjectPlanner(TargetView(db), target_store, None, AdoptionOptions()).plan(
            project, sources.database.rows(project), None)  # type: ignore[union-attr]
        assert [p.path for p in plan.paths] == ["race.txt"]
        FileClient(db, Actor.user(people.alice)).upsert(project, "race.txt", "the user's")
        before = target_fingerprint(db, target_store)
        batch = open_batch(db, sources.describe(), AdoptionOptions())
        with pytest.raises(VersionConflict, match="already has versions"):
            write_plan(db, target_store, None, batch, plan)
        assert target_fingerprint(db, target_store) == before
        report = adopt(db, target_store, sources, AdoptionOptions())
        assert report.projects[0].conflicts[0].kind == "target_differs"
    finally:
        drop_database(pg_server_url, url)



def test_undo_is_refused_while_a_session_is_live_or_members_were_added(
        db, people, target_store, pg_server_url):
    """Undo must not pull files from under a running preview, nor delete a project someone
    was invited to; once neither holds (an ended session does not count), it removes the
    batch exactly."""
    kept, created = accounts.create_project(db, "Kept", people.alice), uuid.uuid4()
    url = new_database(pg_server_url, "undo")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE project_files (project_id uuid, path text, type text,"
                         " content text)")
            conn.execute("INSERT INTO project_files VALUES (%s, 'a.txt', NULL, 'kept'),"
                         " (%s, 'b.txt', NULL, 'created')", (kept, created))
        before = target_fingerprint(db, target_store)
        report = adopt(db, target_store, LegacySources.open(url, None, Settings()),
                       AdoptionOptions(owner=people.alice))
        assert [p.status for p in sorted(report.projects, key=lambda p: p.project_id != kept)
                ] == ["imported", "created"]
        assert report.batch_id is not None
        with db.transaction() as conn:
            (session,) = conn.execute(
                "INSERT INTO preview_sessions (user_id, project_id, status) VALUES (%s, %s,"
                " 'active') RETURNING id", (people.alice, kept)).fetchone()  # type: ignore[misc]
            conn.execute("INSERT INTO project_members VALUES (%s, %s, 'editor')",
                         (created, people.bob))
        refused_state = target_fingerprint(db, target_store)
        with pytest.raises(UndoRefused) as refusal:
            undo_batch(db, target_store, report.batch_id)
        assert sorted(refusal.value.facts["blocked"], key=lambda b: b["project_id"] != str(kept)
                      ) == [
            {"project_id": str(kept),
             "reason": "1 preview session(s) are live and may hold its files"},
            {"project_id": str(created),
             "reason": "1 member(s) were added to the project it created"}]
        assert target_fingerprint(db, target_store) == refused_state
        with db.transaction() as conn:
            conn.execute("UPDATE preview_sessions SET status = 'ended', ended_at = now()"
                         " WHERE id = %s", (session,))
            conn.execute("DELETE FROM project_members WHERE project_id = %s AND user_id = %s",
                         (created, people.bob))
        undo_batch(db, target_store, report.batch_id)
        assert target_fingerprint(db, target_store) == before
    finally:
        drop_database(pg_server_url, url)
