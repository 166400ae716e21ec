"""The built-in preview server over real HTTP: files, 404s, no traversal, live reload."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agent.staticserver import LIVERELOAD_PATH, LiveReload, StaticSite
from tests.test_agent_support import wait_until


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "index.html").write_text("<html><head></head><BODY><h1>hi</h1></BODY></html>")
    (root / "src" / "main.js").write_text("console.log(1)")
    (root / "style.css").write_text("body{}")
    (root / "data.json").write_text("{}")
    (root / "logo.svg").write_text("<svg/>")
    (root / "docs" / "notes.txt").write_text("notes")
    (tmp_path / "secret.txt").write_text("SECRET")
    (root / "escape").symlink_to(tmp_path)
    return root, tmp_path


@pytest.fixture
def site(layout: tuple[Path, Path]) -> Iterator[StaticSite]:
    server = StaticSite(layout[0], 0, LiveReload())
    server.start()
    yield server
    server.stop()


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """A request whose path goes on the wire exactly as given (no client normalization)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_files_are_served_with_their_types(site: StaticSite) -> None:
    base = f"http://127.0.0.1:{site.port}"
    expected = {
        "/src/main.js": ("text/javascript; charset=utf-8", b"console.log(1)"),
        "/style.css": ("text/css; charset=utf-8", b"body{}"),
        "/data.json": ("application/json", b"{}"),
        "/logo.svg": ("image/svg+xml", b"<svg/>"),
        "/docs/notes.txt": ("text/plain; charset=utf-8", b"notes"),
    }
    with httpx.Client(base_url=base) as client:
        for path, (kind, body) in expected.items():
            response = client.get(path)
            assert (response.status_code, response.headers["content-type"]) == (200, kind)
            assert response.content == body
        head = client.head("/src/main.js")
        assert head.status_code == 200 and head.headers["content-length"] == "14"


def test_directories_serve_index_html_and_are_never_listed(site: StaticSite) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{site.port}") as client:
        index = client.get("/")
        assert index.status_code == 200 and b"<h1>hi</h1>" in index.content
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        assert client.get("/docs/").status_code == 404  # no index.html: no listing
        redirect = client.get("/docs")
        assert redirect.status_code == 301 and redirect.headers["location"] == "/docs/"
        assert client.get("/missing.js").status_code == 404
        assert client.get("/src/main.js/").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/src/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/src/%2e%2e/%2e%2e/secret.txt",
        "/..\\secret.txt",
        "/%5c..%5csecret.txt",
        "/escape/secret.txt",
        "//etc/passwd",
        "/%00index.html",
    ],
)
def test_traversal_is_refused(site: StaticSite, path: str) -> None:
    status, body = raw_get(site.port, path)
    assert status == 404 and b"SECRET" not in body and b"root:" not in body


def test_html_gets_the_live_reload_script(site: StaticSite) -> None:
    response = httpx.get(f"http://127.0.0.1:{site.port}/index.html")
    html = response.text
    script = html.index(f'new EventSource("{LIVERELOAD_PATH}?since=0")')
    assert script < html.index("</BODY>") and "location.reload()" in html
    assert int(response.headers["content-length"]) == len(response.content)


async def read_sse(port: int, since: int, events: list[str], opened: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"http://127.0.0.1:{port}{LIVERELOAD_PATH}?since={since}"
        async with client.stream("GET", url) as response:
            assert response.headers["content-type"] == "text/event-stream"
            opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events.append(line)


async def test_a_signal_reaches_every_event_stream(site: StaticSite) -> None:
    events: list[list[str]] = [[], []]
    opened = [asyncio.Event(), asyncio.Event()]
    readers = [asyncio.create_task(read_sse(site.port, 0, events[i], opened[i])) for i in range(2)]
    try:
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 10)
        assert events == [[], []]
        site.live_reload.signal()
        await wait_until(lambda: all(events), message="reload messages")
        assert events == [["data: reload"], ["data: reload"]]
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_a_page_that_missed_a_signal_reloads_on_connect(site: StaticSite) -> None:
    site.live_reload.signal()  # between the page being served (since=0) and its stream opening
    events: list[str] = []
    reader = asyncio.create_task(read_sse(site.port, 0, events, asyncio.Event()))
    try:
        await wait_until(lambda: events, message="the catch-up reload")
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def test_concurrent_requests_are_all_answered_correctly(site: StaticSite) -> None:
    paths = ["/src/main.js", "/style.css", "/missing", "/", "/../secret.txt"] * 40
    expected = {
        "/src/main.js": 200,
        "/style.css": 200,
        "/missing": 404,
        "/": 200,
        "/../secret.txt": 404,
    }
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda path: (path, raw_get(site.port, path)), paths))
    for path, (status, body) in results:
        assert status == expected[path], path
        if path == "/src/main.js":
            assert body == b"console.log(1)"


def test_stop_ends_open_event_streams(layout: tuple[Path, Path]) -> None:
    server = StaticSite(layout[0], 0)
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", LIVERELOAD_PATH)
    response = connection.getresponse()
    assert response.status == 200
    server.stop()
    assert b"data:" not in response.read()  # the stream ended instead of hanging
    connection.close()
