"""Every kind of write leaves versions of the shape sql/0024 leaves to the writers: a
tombstone holds no content, storage key or hash; a live version holds its content or a
storage key (exactly one) and a lowercase hex sha256."""

from __future__ import annotations

import hashlib

from psycopg.types.json import Jsonb

from velocity.db import Actor
from velocity.files import FileClient

SHAPES = """
SELECT is_deleted,
       content IS NOT NULL AS has_content,
       storage_key IS NOT NULL AS has_key,
       content_hash ~ '^[0-9a-f]{64}$' AS has_hash,
       count(*)
  FROM project_files WHERE project_id = %s
 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""


def test_every_kind_of_write_leaves_well_shaped_versions(db, new_project):
    project, owner = new_project()
    files = FileClient(db, Actor.user(owner))
    service = FileClient(db, Actor.service())
    digest = hashlib.sha256(b"\x89PNG").hexdigest()

    files.upsert(project, "src/App.tsx", "one")
    files.upsert(project, "src/App.tsx", "two")
    files.delete(project, "src/App.tsx")
    files.upsert(project, "src/App.tsx", "three")
    files.restore(project, "src/App.tsx", 1)
    service.upsert_binary(project, "public/logo.png", "blobs/logo", digest, 4)
    files.upsert(project, "public/logo.png", "<svg/>")
    service.upsert_binary(project, "public/logo.png", "blobs/logo", digest, 4)
    files.bulk_upsert(project, [{"file_path": f"src/c{i}.ts", "content": f"{i}"}
                                for i in range(3)])
    files.bulk_delete(project, ["src/c0.ts", "src/c1.ts"])
    files.upsert(project, "src/c0.ts", "back")
    with db.transaction() as conn:
        (batch,) = conn.execute(
            "INSERT INTO internal.adoption_batches DEFAULT VALUES RETURNING id").fetchone()
        conn.execute("SELECT internal.adopt_files(%s, %s, %s)", (batch, project, Jsonb([
            {"file_path": "legacy.txt", "versions": [
                {"content": "old", "author": str(owner)},
                {"storage_key": "blobs/legacy", "content_hash": digest, "size_bytes": 4,
                 "author": str(owner)}]}])))

    with db.transaction() as conn:
        shapes = conn.execute(SHAPES, (project,)).fetchall()
    # (is_deleted, has_content, has_key, has_hash, versions)
    assert shapes == [
        (False, False, True, True, 3),  # logo twice, legacy.txt's second version
        (False, True, False, True, 10),
        (True, False, False, None, 3),  # App.tsx, c0 and c1 deleted
    ]
