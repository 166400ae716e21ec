"""Starting a real preview for tests: snapshot, session row, token, agent via a runtime."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx

from velocity.db import Database
from velocity.files import FileClient
from velocity.runtimes import ContainerInfo, ContainerSpec, Runtime
from velocity.settings import Settings
from velocity.snapshots import build_snapshot, snapshot_url
from velocity.storage import ObjectStore
from velocity.tokens import mint_container_token

from .helpers import wait_for

# A small site every runtime's end-to-end test starts a preview of.
SITE = {"index.html": "<h1>hello</h1>", "src/main.js": "console.log('v1')",
        "src/lib/util.js": "export const x = 1", "styles/site.css": "body{}"}


@dataclass
class Preview:
    session_id: UUID
    project_id: UUID
    container: ContainerInfo
    spec: ContainerSpec
    project_dir: Path


def start_preview(db: Database, store: ObjectStore, settings: Settings, runtime: Runtime,
                  runtime_root: Path, project_id: UUID, user_id: UUID,
                  token_ttl: int = 3600) -> Preview:
    snapshot = build_snapshot(db, store, project_id)
    session_id = uuid.uuid4()
    token, claims = mint_container_token(session_id, project_id, token_ttl, settings)
    with db.transaction() as conn:
        conn.execute("INSERT INTO preview_sessions (id, user_id, project_id, status, token_jti,"
                     " snapshot_id) VALUES (%s, %s, %s, 'creating', %s, %s)",
                     (session_id, user_id, project_id, claims.jti, snapshot.snapshot_id))
    spec = ContainerSpec(session_id=str(session_id), project_id=str(project_id), env={
        "PROJECT_ID": str(project_id), "SESSION_ID": str(session_id),
        "SNAPSHOT_URL": snapshot_url(store, snapshot, settings.snapshot_url_ttl_seconds),
        "REALTIME_URL": settings.realtime_url(), "REALTIME_TOKEN": token})
    container = runtime.start(spec)
    return Preview(session_id, project_id, container, spec,
                   runtime_root / container.container_id / "project")


def agent_status(db: Database, session_id: UUID) -> dict | None:
    with db.transaction() as conn:
        row = conn.execute("SELECT agent_status FROM preview_sessions WHERE id = %s",
                           (session_id,)).fetchone()
    return row[0] if row else None


def wait_until_ready(db: Database, preview: Preview, runtime: Runtime,
                     timeout: float = 30) -> dict:
    def ready() -> dict | None:
        status = agent_status(db, preview.session_id)
        if status and status.get("ready"):
            return status
        if runtime.status(preview.container.container_id).state == "exited":
            raise AssertionError("the agent exited:\n"
                                 + runtime.logs(preview.container.container_id, tail=60))
        return None

    return wait_for(ready, timeout=timeout, interval=0.05, message="the agent to be ready")


def disk_tree(root: Path) -> dict[str, bytes]:
    """The regular files under root. The agent may be writing while this walks: a file
    that vanishes between listing and reading is simply absent."""
    tree = {}
    for directory, _, names in os.walk(root):  # os.walk skips directories that vanish
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    tree[path.relative_to(root).as_posix()] = path.read_bytes()
    return tree


def database_tree(db: Database, project_id: UUID) -> dict[str, bytes]:
    with db.transaction() as conn:
        rows = conn.execute("SELECT file_path, content FROM project_files_current"
                            " WHERE project_id = %s AND content IS NOT NULL",
                            (project_id,)).fetchall()
    return {path: content.encode() for path, content in rows}


def wait_until_in_sync(db: Database, preview: Preview, timeout: float = 20) -> None:
    def in_sync() -> bool:
        return disk_tree(preview.project_dir) == database_tree(db, preview.project_id)

    try:
        wait_for(in_sync, timeout=timeout, interval=0.02, message="the agent's disk to match")
    except AssertionError:
        disk, database = disk_tree(preview.project_dir), database_tree(db, preview.project_id)
        differing = sorted(p for p in set(disk) | set(database) if disk.get(p) != database.get(p))
        raise AssertionError(f"paths that differ: {differing[:20]}") from None


def head_seq(db: Database, project_id: UUID) -> int:
    with db.transaction() as conn:
        (head,) = conn.execute("SELECT last_event_seq FROM projects WHERE id = %s",
                               (project_id,)).fetchone()  # type: ignore[misc]
    return int(head)


def check_every_kind_of_change_reaches_disk(db: Database, service: FileClient,
                                            preview: Preview) -> None:
    """A preview of SITE, hydrated: an update, a delete (with its emptied directory) and a
    bulk with a rename reach its disk; the dev server serves the new bytes and the agent
    reports the project's last seq as applied."""
    assert disk_tree(preview.project_dir) == {p: c.encode() for p, c in SITE.items()}
    project = preview.project_id

    service.upsert(project, "src/main.js", "console.log('v2')")
    wait_for(lambda: (preview.project_dir / "src/main.js").read_bytes()
             == b"console.log('v2')", message="the update")

    service.delete(project, "styles/site.css")
    wait_for(lambda: not (preview.project_dir / "styles").exists(),
             message="the delete and its empty directory")

    service.bulk_upsert(project, [
        {"file_path": "src/lib/util.js", "action": "delete"},  # a rename: delete + create
        {"file_path": "src/lib/helpers.js", "content": "export const x = 1"},
        {"file_path": "pages/about.html", "content": "<p>about</p>"},
        {"file_path": "unicodé/ファイル.txt", "content": "ünïcødé"}])
    wait_until_in_sync(db, preview)

    page = httpx.get(f"{preview.container.url}/pages/about.html", timeout=5)
    assert page.status_code == 200 and "<p>about</p>" in page.text
    wait_for(lambda: (agent_status(db, preview.session_id) or {}).get("applied_seq")
             == head_seq(db, project), message="the applied seq to be reported")
