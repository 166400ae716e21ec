"""The agent's apply path: atomic, idempotent writes that never leave PROJECT_DIR."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from agent.apply import TEMP_PREFIX, ApplyFailed, ProjectWriter
from agent.sequence import Duplicate, EventSequencer, Gap, Pending, Ready, Resync, Unsequenced
from tests.test_agent_support import send_bytes, serving, sha256


def update(path: object, content: str, **extra: object) -> dict[str, object]:
    return {
        "file_path": path,
        "content": content,
        "content_hash": sha256(content.encode()),
        "version": 1,
        **extra,
    }


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, or a marker for directories and symlinks."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "<dir>"
            else:
                found[key] = path.read_bytes()
    return found


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob(f"{TEMP_PREFIX}*")]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


async def test_update_creates_parents_and_writes_atomically(project: Path) -> None:
    writer = ProjectWriter(project)
    outcome = await writer.apply("file:update", update("src/deep/App.tsx", "export {}\n"))
    assert (outcome.written, outcome.skipped, outcome.refused) == (1, 0, 0)
    assert (project / "src/deep/App.tsx").read_text() == "export {}\n"
    assert temp_files(project) == []


async def test_same_content_is_skipped_without_touching_the_file(project: Path) -> None:
    writer = ProjectWriter(project)
    await writer.apply("file:update", update("a.txt", "hello"))
    before = os.stat(project / "a.txt")
    outcome = await writer.apply("file:update", update("a.txt", "hello", version=2))
    after = os.stat(project / "a.txt")
    assert (outcome.written, outcome.skipped) == (0, 1) and not outcome.changed
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_changed_content_replaces_the_file_by_rename(project: Path) -> None:
    writer = ProjectWriter(project)
    await writer.apply("file:update", update("a.txt", "hello"))
    before = os.stat(project / "a.txt").st_ino
    await writer.apply("file:update", update("a.txt", "HELLO"))  # same size, other hash
    assert (project / "a.txt").read_text() == "HELLO"
    assert os.stat(project / "a.txt").st_ino != before
    assert temp_files(project) == []


async def test_a_reader_never_sees_a_partial_file(project: Path) -> None:
    writer = ProjectWriter(project)
    versions = ["A" * 200_000, "B" * 50_000 + "\n"]
    await writer.apply("file:update", update("big.txt", versions[0]))
    seen: set[str] = set()
    stop = threading.Event()

    def read_forever() -> None:
        while not stop.is_set():
            seen.add((project / "big.txt").read_text())

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for round_ in range(200):
            await writer.apply("file:update", update("big.txt", versions[round_ % 2]))
    finally:
        stop.set()
        reader.join()
    assert seen <= set(versions)
    assert temp_files(project) == []


async def test_delete_removes_the_file_and_only_emptied_directories(project: Path) -> None:
    writer = ProjectWriter(project)
    await writer.apply(
        "bulk:apply",
        {
            "files": [
                {"action": "update", **update("a/b/c/one.txt", "1")},
                {"action": "update", **update("a/keep.txt", "k")},
            ]
        },
    )
    outcome = await writer.apply("file:delete", {"file_path": "a/b/c/one.txt", "version": 2})
    assert outcome.deleted == 1
    assert not (project / "a/b").exists()  # c and b were emptied
    assert (project / "a/keep.txt").read_text() == "k"
    await writer.apply("file:delete", {"file_path": "a/keep.txt", "version": 2})
    assert project.is_dir() and list(project.iterdir()) == []  # never the root itself
    again = await writer.apply("file:delete", {"file_path": "a/keep.txt", "version": 2})
    assert (again.deleted, again.skipped) == (0, 1)


async def test_bulk_applies_every_item_as_one_unit(project: Path) -> None:
    writer = ProjectWriter(project)
    await writer.apply("file:update", update("old/gone.txt", "bye"))
    await writer.apply("file:update", update("same.txt", "same"))
    outcome = await writer.apply(
        "bulk:apply",
        {
            "count": 6,
            "files": [
                {"action": "update", **update("src/a.ts", "first")},
                {"action": "update", **update("src/b.ts", "b")},
                {"action": "delete", "file_path": "old/gone.txt", "version": 2},
                {"action": "update", **update("same.txt", "same")},
                {"action": "update", **update("src/a.ts", "last wins")},
                {"action": "delete", "file_path": "../escape", "version": 1},
            ],
        },
    )
    assert (outcome.written, outcome.deleted, outcome.skipped, outcome.refused) == (2, 1, 1, 1)
    assert tree(project) == {
        "src": "<dir>",
        "src/a.ts": b"last wins",
        "src/b.ts": b"b",
        "same.txt": b"same",
    }
    assert temp_files(project) == []


async def test_bulk_replacing_a_directory_by_a_file(project: Path) -> None:
    writer = ProjectWriter(project)
    await writer.apply("file:update", update("a/b.txt", "inside"))
    await writer.apply(
        "bulk:apply",
        {
            "files": [
                {"action": "delete", "file_path": "a/b.txt", "version": 2},
                {"action": "update", **update("a", "now a file")},
            ]
        },
    )
    assert (project / "a").read_text() == "now a file"


def binary_server(blobs: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def respond(handler: BaseHTTPRequestHandler, count: int) -> None:
        name = handler.path.split("?")[0].lstrip("/")
        if name in blobs:
            send_bytes(handler, blobs[name])
        else:
            send_bytes(handler, b"missing", status=404)

    return serving(respond)


async def test_binary_updates_are_downloaded_verified_and_skipped_when_equal(
    project: Path,
) -> None:
    blob = bytes(range(256)) * 1000
    with binary_server({"logo.png": blob}) as server:
        async with httpx.AsyncClient() as client:
            writer = ProjectWriter(project, client)
            item = {
                "file_path": "public/logo.png",
                "content_hash": sha256(blob),
                "size": len(blob),
                "download_url": f"{server.base}/logo.png?sig=x",
            }
            outcome = await writer.apply("file:update", item)
            assert outcome.written == 1
            assert (project / "public/logo.png").read_bytes() == blob
            again = await writer.apply("file:update", item)
            assert again.skipped == 1
            assert server.requests == ["/logo.png?sig=x"]  # the second one never downloaded
            bulk = await writer.apply(
                "bulk:apply",
                {
                    "files": [
                        {"action": "update", **item, "file_path": "copy.png"},
                        {"action": "update", **update("readme.md", "# hi")},
                    ]
                },
            )
            assert bulk.written == 2 and (project / "copy.png").read_bytes() == blob
    assert temp_files(project) == []


async def test_a_failed_download_fails_the_whole_batch_and_leaves_nothing(
    project: Path,
) -> None:
    blob = b"\x89PNG real bytes"
    with binary_server({"ok.png": blob}) as server:
        async with httpx.AsyncClient() as client:
            writer = ProjectWriter(project, client)
            wrong_hash = {
                "file_path": "bad.png",
                "content_hash": sha256(b"other"),
                "download_url": f"{server.base}/ok.png",
            }
            gone = {
                "file_path": "gone.png",
                "content_hash": sha256(blob),
                "download_url": f"{server.base}/gone.png",
            }
            for broken in (wrong_hash, gone):
                with pytest.raises(ApplyFailed):
                    await writer.apply(
                        "bulk:apply",
                        {
                            "files": [
                                {"action": "update", **update("staged.txt", "never renamed")},
                                {"action": "update", **broken},
                            ]
                        },
                    )
    assert tree(project) == {}  # neither the staged text file nor any temp file


async def test_a_binary_without_a_link_cannot_be_applied(project: Path) -> None:
    with pytest.raises(ApplyFailed):
        await ProjectWriter(project).apply(
            "file:update", {"file_path": "x.bin", "content_hash": sha256(b"x")}
        )


MALICIOUS = [
    "../outside/pwned.txt",
    "a/../../outside/pwned.txt",
    "/etc/pwned",
    "/tmp/pwned",
    "a\\..\\..\\pwned",
    "C:/pwned",
    "C:pwned",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "",
    ".",
    "..",
    "a//b",
    "./a",
    "a/./b",
    "a/",
    "x" * 300,
    5,
    None,
    ["a"],
    {"p": 1},
]


async def test_every_malicious_path_is_refused_and_nothing_lands_outside(
    tmp_path: Path, project: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    before = tree(tmp_path)
    writer = ProjectWriter(project)
    for path in MALICIOUS:
        for kind, payload in (
            ("file:update", update(path, "pwned")),
            ("file:delete", {"file_path": path, "version": 1}),
        ):
            outcome = await writer.apply(kind, payload)
            assert (outcome.refused, outcome.written, outcome.deleted) == (1, 0, 0), path
    bulk = await writer.apply(
        "bulk:apply",
        {
            "files": [{"action": "update", **update(path, "pwned")} for path in MALICIOUS]
            + [{"action": "update", **update("fine.txt", "ok")}]
        },
    )
    assert (bulk.refused, bulk.written) == (len(MALICIOUS), 1)
    after = tree(tmp_path)
    assert after.pop("project/fine.txt") == b"ok"
    assert after == before


async def test_symlinks_inside_the_project_are_never_followed(
    tmp_path: Path, project: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (project / "evil").symlink_to(outside)
    (project / "link.txt").symlink_to(outside / "secret.txt")
    (project / "dangling").symlink_to(tmp_path / "nowhere")
    (project / "real").mkdir()
    (project / "real" / "hop").symlink_to(outside)
    before = tree(tmp_path)
    writer = ProjectWriter(project)
    attempts = [
        ("file:update", update("evil/new.txt", "pwned")),
        ("file:update", update("evil/sub/new.txt", "pwned")),
        ("file:update", update("evil/secret.txt", "pwned")),
        ("file:update", update("link.txt", "pwned")),
        ("file:update", update("dangling", "pwned")),
        ("file:update", update("dangling/x", "pwned")),
        ("file:update", update("real/hop/new.txt", "pwned")),
        ("file:delete", {"file_path": "evil/secret.txt"}),
        ("file:delete", {"file_path": "link.txt"}),
        ("file:delete", {"file_path": "real/hop/secret.txt"}),
        (
            "bulk:apply",
            {
                "files": [
                    {"action": "update", **update("evil/b.txt", "pwned")},
                    {"action": "delete", "file_path": "evil/secret.txt"},
                ]
            },
        ),
    ]
    for kind, payload in attempts:
        outcome = await writer.apply(kind, payload)
        assert outcome.refused >= 1 and not outcome.changed, payload
    assert tree(tmp_path) == before
    assert (outside / "secret.txt").read_text() == "secret"


async def test_a_file_where_a_directory_is_needed_is_refused(project: Path) -> None:
    (project / "a").write_text("a file")
    outcome = await ProjectWriter(project).apply("file:update", update("a/b.txt", "x"))
    assert outcome.refused == 1 and (project / "a").read_text() == "a file"


# --- ordering: duplicates, gaps, parts ------------------------------------------------------


def test_duplicates_are_skipped_and_gaps_detected() -> None:
    sequencer = EventSequencer(last_seq=10)
    assert sequencer.offer("file:update", {"seq": 9}) == Duplicate(9)
    assert sequencer.offer("file:update", {"seq": 10}) == Duplicate(10)
    assert sequencer.offer("file:update", {"seq": 12}) == Gap(last=10, seq=12)
    ready = sequencer.offer("file:update", {"seq": 11, "file_path": "a"})
    assert isinstance(ready, Ready) and ready.seq == 11
    assert sequencer.offer("file:update", {"seq": 12}) == Gap(10, 12)  # 11 not applied yet
    sequencer.applied(11)
    assert isinstance(sequencer.offer("file:update", {"seq": 12}), Ready)
    assert sequencer.offer("hello", {"text": "from a user"}) == Unsequenced("hello")


def parts_of(seq: int, kind: str, payload: dict[str, object], size: int) -> list[dict]:
    text = json.dumps(payload)
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    return [
        {"seq": seq, "event": kind, "index": i, "count": len(chunks), "data": chunk}
        for i, chunk in enumerate(chunks)
    ]


def test_parts_are_reassembled_in_any_order_once_all_arrived() -> None:
    payload = {
        "seq": 5,
        "files": [
            {"action": "update", "file_path": f"f{i}", "content": "x" * 50} for i in range(20)
        ],
        "count": 20,
    }
    parts = parts_of(5, "bulk:apply", payload, 97)
    assert len(parts) > 5
    sequencer = EventSequencer(last_seq=4)
    shuffled = parts[1:][::-1] + parts[:1]
    verdicts = [sequencer.offer("velocity:part", part) for part in shuffled]
    assert all(isinstance(verdict, Pending) for verdict in verdicts[:-1])
    assert verdicts[-1] == Ready(5, "bulk:apply", payload)
    assert sequencer.offer("velocity:part", parts[0]) == Pending(5)  # not applied: a re-send
    sequencer.applied(5)
    assert sequencer.offer("velocity:part", parts[0]) == Duplicate(5)


def test_a_new_join_drops_partial_parts() -> None:
    payload = {"seq": 2, "file_path": "a", "content": "y" * 300}
    parts = parts_of(2, "file:update", payload, 100)
    sequencer = EventSequencer(last_seq=1)
    sequencer.offer("velocity:part", parts[0])
    sequencer.reset(1)
    for part in parts[1:]:
        assert isinstance(sequencer.offer("velocity:part", part), Pending)
    assert isinstance(sequencer.offer("velocity:part", parts[0]), Ready)


def test_oversized_or_malformed_parts_ask_for_a_resync() -> None:
    sequencer = EventSequencer(last_seq=0, max_event_bytes=1000)
    big = parts_of(1, "bulk:apply", {"files": ["z" * 3000]}, 600)
    verdicts = [sequencer.offer("velocity:part", part) for part in big]
    assert Resync(1, "event_too_large") in verdicts
    sequencer.reset(0)
    assert sequencer.offer(
        "velocity:part", {"seq": 1, "event": "x", "index": 3, "count": 2, "data": ""}
    ) == Resync(1, "malformed_part")
    assert sequencer.offer(
        "velocity:part", {"seq": 1, "event": "x", "index": 0, "count": 1, "data": "{not json"}
    ) == Resync(1, "malformed_part")
