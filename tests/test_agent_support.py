"""Shared pieces of the agent tests (no tests here): polling, zips, local HTTP servers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], T | Awaitable[T]], timeout: float = 10.0, message: str = "condition"
) -> T:
    """Poll `condition` (sync or async) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.01)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_zip(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A snapshot-like zip of `files` and its sha256."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[path])
    data = out.getvalue()
    return data, sha256(data)


def fragment(digest: str, watermark: int, snapshot_id: str | None = None) -> str:
    return f"#sha256={digest}&watermark={watermark}&snapshot_id={snapshot_id or uuid.uuid4()}"


Responder = Callable[[BaseHTTPRequestHandler, int], None]


class HTTPServerThread:
    """A real HTTP server on 127.0.0.1 whose GET answers come from `respond(handler, n)`,
    n counting requests from 1; records every request path."""

    def __init__(self, respond: Responder) -> None:
        self.requests: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests.append(self.path)
                    count = len(owner.requests)
                respond(self, count)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HTTPServerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def send_bytes(
    handler: BaseHTTPRequestHandler, data: bytes, status: int = 200, declared: int | None = None
) -> None:
    """Answer with `data`; declare `declared` bytes (more than sent: a cut connection)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/zip")
    handler.send_header("Content-Length", str(len(data) if declared is None else declared))
    if declared is not None:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


@contextmanager
def serving(respond: Responder) -> Iterator[HTTPServerThread]:
    with HTTPServerThread(respond) as server:
        yield server
