"""The built-in preview server: PROJECT_DIR over HTTP on 127.0.0.1, with live reload.

Used when there is no DEV_COMMAND and no npm `dev` script. Every HTML response gets a small
script that listens on `/__velocity/livereload` (server-sent events) and reloads the page
when the agent signals that files changed.
"""

from __future__ import annotations

import mimetypes
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from agent.httpserver import BackgroundHTTPServer

LIVERELOAD_PATH = "/__velocity/livereload"
KEEPALIVE_SECONDS = 15.0
_BODY_END = re.compile(rb"</body\s*>", re.IGNORECASE)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
}


def livereload_script(generation: int) -> bytes:
    return (
        "<script>(()=>{const s=new EventSource("
        f'"{LIVERELOAD_PATH}?since={generation}");'
        "s.onmessage=()=>location.reload();})();</script>"
    ).encode()


def content_type(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension in _TYPES:
        return _TYPES[extension]
    guessed = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


def inject_livereload(html: bytes, generation: int) -> bytes:
    """The page with the live-reload script before its last `</body>` (or at its end)."""
    script = livereload_script(generation)
    matches = list(_BODY_END.finditer(html))
    if not matches:
        return html + script
    at = matches[-1].start()
    return html[:at] + script + html[at:]


class LiveReload:
    """A generation counter: `signal()` bumps it, SSE streams wait for it to move."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.generation = 0
        self.closed = False

    def signal(self) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def wait_beyond(self, seen: int, timeout: float) -> int | None:
        """The generation once it exceeds `seen`; None on timeout or when closed."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or self.generation > seen, timeout)
            if self.closed or self.generation <= seen:
                return None
            return self.generation

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()


def resolve_request_path(root: Path, url_path: str) -> tuple[str | None, bool]:
    """(file to serve, or None for 404; True when a directory needs its trailing slash).

    Refuses NUL, backslashes and `..` outright, then requires the real path (symlinks
    resolved) to stay inside the real root: nothing outside PROJECT_DIR is ever served.
    """
    decoded = unquote(url_path)
    if not decoded.startswith("/") or "\x00" in decoded or "\\" in decoded:
        return None, False
    parts = [part for part in decoded.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None, False
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *parts))
    if candidate != real_root and not candidate.startswith(real_root + os.sep):
        return None, False
    if os.path.isdir(candidate):
        if not decoded.endswith("/"):
            return None, True
        candidate = os.path.join(candidate, "index.html")
    elif decoded.endswith("/"):
        return None, False  # a file named as a directory
    return (candidate, False) if os.path.isfile(candidate) else (None, False)


class StaticSite:
    """PROJECT_DIR served on 127.0.0.1:`port` (0: any free port) from a background thread."""

    def __init__(self, root: Path, port: int, live_reload: LiveReload | None = None) -> None:
        self.root = Path(root)
        self.live_reload = live_reload or LiveReload()
        self._server = BackgroundHTTPServer.bind(port, _handler_for(self), "agent-static")

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self.live_reload.close()
        self._server.stop()


def _handler_for(site: StaticSite) -> type[BaseHTTPRequestHandler]:
    class StaticHandler(_StaticHandler):
        pass

    StaticHandler.site = site
    return StaticHandler


class _StaticHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    site: StaticSite

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _respond(self, head: bool) -> None:
        url = urlsplit(self.path)
        if url.path == LIVERELOAD_PATH and not head:
            self._stream_reloads(url.query)
            return
        path, needs_slash = resolve_request_path(self.site.root, url.path)
        if needs_slash:
            self._plain(301, b"", {"Location": quote(unquote(url.path)) + "/"}, head)
        elif path is None:
            self._plain(404, b"not found\n", {}, head)
        else:
            self._serve_file(path, head)

    def _serve_file(self, path: str, head: bool) -> None:
        kind = content_type(path)
        try:
            handle = open(path, "rb")
        except OSError:
            self._plain(404, b"not found\n", {}, head)
            return
        with handle:
            if kind.startswith("text/html"):
                body = inject_livereload(handle.read(), self.site.live_reload.generation)
                self._plain(200, body, {"Content-Type": kind}, head)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if not head:
                shutil.copyfileobj(handle, self.wfile)

    def _plain(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(code)
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _stream_reloads(self, query: str) -> None:
        """Server-sent events: `data: reload` each time the generation moves past `since`."""
        live = self.site.live_reload
        try:
            seen = int(parse_qs(query).get("since", [""])[0])
        except ValueError:
            seen = live.generation
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            while not live.closed:
                generation = live.wait_beyond(seen, KEEPALIVE_SECONDS)
                if generation is None:
                    if live.closed:
                        break
                    self.wfile.write(b": keepalive\n\n")
                else:
                    seen = generation
                    self.wfile.write(f"id: {generation}\ndata: reload\n\n".encode())
                self.wfile.flush()
        except OSError:
            pass  # the page went away
