"""Hydration against a real HTTP server: retried on cuts and 5xx, refused on a bad sha256."""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from agent.archive import ArchiveRejected
from agent.backoff import BackoffPolicy
from agent.hydrate import (
    DownloadFailed,
    SnapshotTooLarge,
    SnapshotUnavailable,
    hydrate_project,
)
from agent.snapshot import parse_snapshot_url
from tests.test_agent_support import build_zip, fragment, send_bytes, serving

FILES = {
    "index.html": b"<html><body>hi</body></html>",
    "src/main.js": b"console.log('hi')\n" * 5000,
    "src/deep/data.json": b'{"a": 1}',
}
FAST = BackoffPolicy(initial=0.01, maximum=0.05)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def hydrate(url: str, project: Path, **options: object) -> None:
    async with httpx.AsyncClient() as client:
        await hydrate_project(client, parse_snapshot_url(url), project, backoff=FAST, **options)  # type: ignore[arg-type]


def leftovers(project: Path) -> list[str]:
    return sorted(p.name for p in project.parent.iterdir() if p.name.startswith("."))


async def test_hydrates_the_project_and_strips_the_fragment(tmp_path: Path) -> None:
    data, digest = build_zip(FILES)
    with serving(lambda handler, n: send_bytes(handler, data)) as server:
        url = f"{server.base}/snap.zip?expires=1&signature=abc" + fragment(digest, 7)
        await hydrate(url, tmp_path / "project")
        assert server.requests == ["/snap.zip?expires=1&signature=abc"]
    assert tree(tmp_path / "project") == FILES
    assert leftovers(tmp_path / "project") == []


async def test_a_body_cut_mid_stream_is_retried_never_half_extracted(tmp_path: Path) -> None:
    data, digest = build_zip(FILES)

    def respond(handler: BaseHTTPRequestHandler, count: int) -> None:
        if count <= 2:
            send_bytes(handler, data[: len(data) // 3], declared=len(data))  # then hang up
        else:
            send_bytes(handler, data)

    project = tmp_path / "project"
    project.mkdir()
    (project / "old.txt").write_text("before")
    with serving(respond) as server:
        await hydrate(f"{server.base}/s.zip" + fragment(digest, 1), project)
        assert len(server.requests) == 3
    assert tree(project) == FILES
    assert leftovers(project) == []


async def test_server_errors_are_retried_then_given_up(tmp_path: Path) -> None:
    data, digest = build_zip(FILES)

    def flaky(handler: BaseHTTPRequestHandler, count: int) -> None:
        send_bytes(handler, b"oops", status=503) if count <= 3 else send_bytes(handler, data)

    with serving(flaky) as server:
        await hydrate(f"{server.base}/s.zip" + fragment(digest, 1), tmp_path / "p")
        assert len(server.requests) == 4
    assert tree(tmp_path / "p") == FILES

    with serving(lambda handler, n: send_bytes(handler, b"down", status=500)) as server:
        with pytest.raises(DownloadFailed):
            await hydrate(f"{server.base}/s.zip" + fragment(digest, 1), tmp_path / "q", attempts=3)
        assert len(server.requests) == 3
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("status", [403, 404])
async def test_a_refused_link_is_not_retried(tmp_path: Path, status: int) -> None:
    _, digest = build_zip(FILES)
    with serving(lambda handler, n: send_bytes(handler, b"no", status=status)) as server:
        with pytest.raises(SnapshotUnavailable) as caught:
            await hydrate(
                f"{server.base}/s.zip?signature=SECRET" + fragment(digest, 1), tmp_path / "p"
            )
        assert len(server.requests) == 1
    assert caught.value.status == status and "SECRET" not in str(caught.value)


async def test_a_sha256_mismatch_is_refused_and_the_project_untouched(tmp_path: Path) -> None:
    data, _ = build_zip(FILES)
    _, other_digest = build_zip({"x": b"other"})
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "keep.ts").write_text("mine")
    (project / "node_modules").mkdir()
    (project / "node_modules" / "dep.js").write_text("dep")
    before = tree(project)
    with serving(lambda handler, n: send_bytes(handler, data)) as server:
        with pytest.raises(ArchiveRejected) as caught:
            await hydrate(f"{server.base}/s.zip" + fragment(other_digest, 1), project)
    assert caught.value.reason == "sha256_mismatch"
    assert tree(project) == before
    assert leftovers(project) == []


async def test_the_size_bound_is_enforced(tmp_path: Path) -> None:
    data, digest = build_zip(FILES)
    with serving(lambda handler, n: send_bytes(handler, data)) as server:
        with pytest.raises(SnapshotTooLarge):
            await hydrate(
                f"{server.base}/s.zip" + fragment(digest, 1),
                tmp_path / "p",
                max_bytes=len(data) - 1,
            )
    assert not (tmp_path / "p").exists() and leftovers(tmp_path / "p") == []


async def test_installed_dependencies_survive_a_rehydration(tmp_path: Path) -> None:
    data, digest = build_zip(FILES)
    project = tmp_path / "project"
    (project / "node_modules" / "vite").mkdir(parents=True)
    (project / "node_modules" / "vite" / "index.js").write_text("vite")
    (project / "stale.txt").write_text("gone after hydration")
    with serving(lambda handler, n: send_bytes(handler, data)) as server:
        await hydrate(f"{server.base}/s.zip" + fragment(digest, 1), project)
    assert tree(project) == {**FILES, "node_modules/vite/index.js": b"vite"}


async def test_the_signed_query_never_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, digest = build_zip(FILES)

    def respond(handler: BaseHTTPRequestHandler, count: int) -> None:
        send_bytes(handler, b"", status=502) if count == 1 else send_bytes(handler, data)

    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "websockets"):
        caplog.set_level(logging.DEBUG, logger=name)  # even when a host turns them up
    with serving(respond) as server:
        await hydrate(
            f"{server.base}/s.zip?signature=TOPSECRET" + fragment(digest, 1), tmp_path / "p"
        )
    assert "TOPSECRET" not in caplog.text


def test_library_loggers_never_print_a_url_query(caplog: pytest.LogCaptureFixture) -> None:
    from agent.logs import quiet_url_loggers

    quiet_url_loggers()
    for name in ("httpx", "websockets.client"):
        caplog.set_level(logging.DEBUG, logger=name)  # a host turning them up again
        logging.getLogger(name).info("GET http://h/x?signature=TOPSECRET&apikey=TOKEN HTTP/1.1")
    assert "TOPSECRET" not in caplog.text and "TOKEN" not in caplog.text
    assert caplog.text.count("?<redacted>") == 2
