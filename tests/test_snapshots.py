"""Snapshots: deterministic, reused when unchanged, exact at their watermark, round-trippable."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import psycopg
import pytest

from agent.archive import extract_snapshot
from velocity.db import Actor
from velocity.files import FileClient
from velocity.snapshots import _read_ahead, build_snapshot, load_manifest
from velocity.storage import LocalStore

FILES = {f"src/components/C{i}.tsx": f"export const C{i} = () => <b>{i}</b>;\n" * (i % 7 + 1)
         for i in range(40)}
FILES.update({"index.html": "<div id=root></div>", "ünï/文件.md": "# unicode", "empty.txt": ""})


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store", "http://127.0.0.1:9", "test-secret")


@pytest.fixture
def service(db):
    return FileClient(db, Actor.service())


def zip_bytes(store: LocalStore, result) -> bytes:
    return store.get(result.storage_key)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_equal_content_gives_byte_identical_zips_whatever_the_order(db, store, service,
                                                                     new_project):
    one, _ = new_project()
    two, _ = new_project()
    items = list(FILES.items())
    service.bulk_upsert(one, [{"file_path": p, "content": c} for p, c in items])
    random.Random(7).shuffle(items)
    for path, content in items:  # other order, one write each, plus an edit reverted
        service.upsert(two, path, content + "draft")
        service.upsert(two, path, content)
    first, second = build_snapshot(db, store, one), build_snapshot(db, store, two)
    assert first.sha256 == second.sha256 and first.bytes == second.bytes
    assert zip_bytes(store, first) == zip_bytes(store, second)
    again = build_snapshot(db, store, one, force=True)
    assert again.snapshot_id != first.snapshot_id and again.sha256 == first.sha256


def test_an_unchanged_project_reuses_its_snapshot_and_uploads_nothing(db, store, service,
                                                                       new_project):
    project_id, _ = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in FILES.items()])
    first = build_snapshot(db, store, project_id)
    objects = store.list("project-snapshots/")
    reused = build_snapshot(db, store, project_id)
    assert reused.reused and reused.snapshot_id == first.snapshot_id
    assert reused.sha256 == first.sha256 and reused.watermark == first.watermark
    assert store.list("project-snapshots/") == objects
    service.upsert(project_id, "index.html", "<p>changed</p>")
    changed = build_snapshot(db, store, project_id)
    assert not changed.reused and changed.sha256 != first.sha256


def test_build_extract_round_trip_is_byte_identical(db, store, service, new_project, tmp_path):
    project_id, _ = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in FILES.items()])
    service.delete(project_id, "empty.txt")
    result = build_snapshot(db, store, project_id)
    target = tmp_path / "project"
    extracted = extract_snapshot(store.path_of(result.storage_key), target, result.sha256)
    expected = {f.file_path: f.content.encode() for f in service.list_current(project_id)}
    assert tree(target) == expected and extracted.files == len(expected)
    manifest = load_manifest(store, project_id, result.snapshot_id)
    assert manifest.watermark == result.watermark and manifest.sha256 == result.sha256
    assert [f.path for f in manifest.files] == sorted(expected)
    assert all(f.sha256 == hashlib.sha256(expected[f.path]).hexdigest() for f in manifest.files)


def test_binary_files_come_from_the_store(db, store, service, new_project, tmp_path):
    project_id, _ = new_project()
    blob = bytes(range(256)) * 4096  # 1 MiB, not valid UTF-8
    store.put_bytes(f"project-files/{project_id}/logo.png", blob)
    service.upsert_binary(project_id, "public/logo.png", f"project-files/{project_id}/logo.png",
                          hashlib.sha256(blob).hexdigest(), len(blob), file_type="image")
    service.upsert(project_id, "index.html", "<img src=/logo.png>")
    result = build_snapshot(db, store, project_id)
    target = tmp_path / "bin"
    extract_snapshot(store.path_of(result.storage_key), target, result.sha256)
    assert (target / "public/logo.png").read_bytes() == blob


def test_a_snapshot_ready_event_follows_the_build(db, store, service, new_project):
    project_id, _ = new_project()
    service.upsert(project_id, "a.txt", "a")
    result = build_snapshot(db, store, project_id)
    (event,) = service.events_since(project_id, result.watermark)
    assert event.type == "snapshot:ready" and event.seq == result.watermark + 1
    assert event.payload["snapshot_id"] == str(result.snapshot_id)
    assert event.payload["watermark"] == result.watermark
    assert "url" not in event.payload  # signed URLs never enter the log
    assert build_snapshot(db, store, project_id).reused  # the event is not a file change


def test_the_watermark_is_exact_under_concurrent_writers(db, store, service, new_project,
                                                         tmp_path):
    project_id, _ = new_project()
    service.bulk_upsert(project_id, [{"file_path": f"f{i}.txt", "content": "0"}
                                     for i in range(20)])
    stop = threading.Event()

    def write() -> None:
        rng = random.Random(1)
        n = 0
        while not stop.is_set():
            n += 1
            path = f"f{rng.randrange(25)}.txt"
            if rng.random() < 0.15:
                try:
                    service.delete(project_id, path)
                except Exception:  # noqa: BLE001 - deleting a missing path is fine here
                    pass
            else:
                service.upsert(project_id, path, str(n))

    writers = [threading.Thread(target=write) for _ in range(2)]
    for writer in writers:
        writer.start()
    try:
        results = [build_snapshot(db, store, project_id, force=True) for _ in range(8)]
    finally:
        stop.set()
        for writer in writers:
            writer.join(timeout=30)
    events = service.events_since(project_id, 0, max_rows=10000)
    assert len({r.watermark for r in results}) > 1, "writers should have advanced the seq"
    for index, result in enumerate(results):
        state: dict[str, bytes] = {}
        for event in events:
            if event.seq > result.watermark:
                break
            items = event.payload["files"] if event.type == "bulk:apply" else [event.payload]
            for item in items if event.type != "snapshot:ready" else []:
                if item.get("action") == "delete" or event.type == "file:delete":
                    state.pop(item["file_path"], None)
                else:
                    state[item["file_path"]] = item["content"].encode()
        target = tmp_path / f"w{index}"
        extract_snapshot(store.path_of(result.storage_key), target, result.sha256)
        assert tree(target) == state, f"snapshot {index} at watermark {result.watermark}"


def test_unknown_project_is_not_found(db, store):
    from velocity.errors import NotFound

    with pytest.raises(NotFound):
        build_snapshot(db, store, "00000000-0000-0000-0000-000000000000")


def _edit(service, project_id) -> None:
    service.upsert(project_id, "index.html", "<main>edited</main>")
    service.delete(project_id, "empty.txt")
    service.upsert(project_id, "src/new/ünï.ts", "export const fresh = 1;\n")


def test_a_rebuild_on_the_last_snapshot_equals_a_build_from_scratch(db, store, service,
                                                                    new_project, tmp_path):
    project_id, _ = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in FILES.items()])
    build_snapshot(db, store, project_id)
    _edit(service, project_id)
    rebuilt = build_snapshot(db, store, project_id)
    scratch = build_snapshot(db, store, project_id, force=True)
    assert not rebuilt.reused and rebuilt.sha256 == scratch.sha256
    assert zip_bytes(store, rebuilt) == zip_bytes(store, scratch)
    extract_snapshot(store.path_of(rebuilt.storage_key), tmp_path / "out", rebuilt.sha256)
    expected = {f.file_path: (f.content or "").encode() for f in service.list_current(project_id)}
    assert tree(tmp_path / "out") == expected


def _replace_base_zip(db, store, result, data: bytes, *, record_hash: bool) -> None:
    store.put_bytes(result.storage_key, data)
    if record_hash:
        with db.transaction() as conn:
            conn.execute("UPDATE project_snapshots SET sha256 = %s WHERE id = %s",
                         (hashlib.sha256(data).hexdigest(), result.snapshot_id))


def test_unchanged_files_are_copied_from_the_base_zip(db, store, service, new_project, tmp_path):
    """Shown with a base whose record of one unchanged file was swapped (and its hash
    recorded to match): the rebuild carries the swapped record over instead of recompressing."""
    from velocity.archive import ArchiveEntry, write_snapshot_zip

    project_id, _ = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in FILES.items()])
    base = build_snapshot(db, store, project_id)
    swapped = {**FILES, "index.html": "swapped in the base"}
    out = tmp_path / "swapped.zip"
    with open(out, "wb") as handle:
        write_snapshot_zip([ArchiveEntry.from_bytes(p, c.encode()) for p, c in swapped.items()],
                           handle)
    _replace_base_zip(db, store, base, out.read_bytes(), record_hash=True)
    service.upsert(project_id, "src/components/C1.tsx", "edited")
    rebuilt = build_snapshot(db, store, project_id)
    extract_snapshot(store.path_of(rebuilt.storage_key), tmp_path / "out", rebuilt.sha256)
    assert (tmp_path / "out" / "index.html").read_text() == "swapped in the base"
    assert (tmp_path / "out" / "src/components/C1.tsx").read_text() == "edited"


@pytest.mark.parametrize("damage", ["altered bytes", "missing object", "not a zip"])
def test_a_damaged_base_is_skipped_and_the_build_is_still_exact(db, store, service, new_project,
                                                                caplog, damage):
    project_id, _ = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in FILES.items()])
    base = build_snapshot(db, store, project_id)
    if damage == "altered bytes":
        data = bytearray(zip_bytes(store, base))
        data[40] ^= 0xFF
        _replace_base_zip(db, store, base, bytes(data), record_hash=False)
    elif damage == "missing object":
        store.delete(base.storage_key)
    else:
        _replace_base_zip(db, store, base, b"not a zip", record_hash=True)
    _edit(service, project_id)
    with caplog.at_level("WARNING", logger="velocity.snapshots"):
        rebuilt = build_snapshot(db, store, project_id)
    assert f"snapshot {base.snapshot_id} cannot be the base" in caplog.text
    assert rebuilt.sha256 == build_snapshot(db, store, project_id, force=True).sha256


def test_read_ahead_yields_every_row_in_order_and_stops_with_its_reader(db):
    with db.pool.connection() as conn, conn.transaction():
        with conn.cursor(name="all_rows") as cursor:
            cursor.execute("SELECT g FROM generate_series(1, 1000) AS g")
            assert [row[0] for row in _read_ahead(cursor)] == list(range(1, 1001))
        with conn.cursor(name="abandoned") as cursor:
            cursor.execute("SELECT g FROM generate_series(1, 100000) AS g")
            rows = _read_ahead(cursor)
            assert next(rows) == (1,)
            rows.close()  # the reader stops early: the fetching thread must end with it
            assert not [thread for thread in threading.enumerate()
                        if thread.name == "snapshot-fetch"]
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_read_ahead_hands_a_fetch_error_to_its_reader(db):
    with db.pool.connection() as conn, conn.transaction():
        with conn.cursor(name="failing") as cursor:
            cursor.execute("SELECT 1 / (g - 700) FROM generate_series(1, 1000) AS g")
            rows = _read_ahead(cursor)
            with pytest.raises(psycopg.errors.DivisionByZero):
                for _ in rows:
                    pass
