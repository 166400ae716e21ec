"""A TCP proxy between agents and the service that can cut connections on command.

Agents reach the service only through it (VELOCITY_PUBLIC_URL names the proxy), so it sees
every websocket and every download. Two faults: `cut_websockets(n)` forwards a strict prefix
of the next `n` chunks of frames the service sends on websockets (open ones or new ones) —
cutting a frame in the middle — then aborts both sides; `cut_snapshot_downloads(n)` lets the
next `n` snapshot responses through up to a point inside their body, then aborts. Cut points
come from a seeded RNG.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from dataclasses import dataclass, field

CHUNK = 65536
WEBSOCKET_REQUEST = re.compile(rb"^GET /realtime/v1/websocket[ ?]")
SNAPSHOT_REQUEST = re.compile(rb"^GET /storage/v1/object/sign/project-snapshots/")
HEADER_END = b"\r\n\r\n"


@dataclass(eq=False)
class Link:
    """One proxied connection: what it carries and whether a cut is pending on it."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    websocket: bool = False
    upgraded: bool = False  # the 101 response has gone by: what follows is frames
    cut_download: bool = False  # the response being relayed is a snapshot still to cut
    response_head: bytearray = field(default_factory=bytearray)
    cut_at: int | None = None  # byte offset in the response at which to cut
    relayed: int = 0

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


@dataclass
class CutCounts:
    websocket_cuts: int = 0
    download_cuts: int = 0
    connections: int = 0
    refused: int = 0  # the service was down when a client connected


class ChaosProxy:
    """Listens on 127.0.0.1:`port`, forwards to 127.0.0.1:`upstream_port`; runs its own event
    loop in a thread so the test's blocking code can arm faults at any time."""

    def __init__(self, upstream_port: int, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.counts = CutCounts()
        self._rng = random.Random(seed)
        self._links: set[Link] = set()
        self._websocket_chunks_to_cut = 0
        self._downloads_to_cut = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy",
                                        daemon=True)

    def start(self) -> ChaosProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for link in list(self._links):
                link.abort()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reseed(self, seed: int) -> None:
        """Cut points from here on follow `seed` (a chaos run's own)."""
        with self._lock:
            self._rng.seed(seed)

    # -- faults --------------------------------------------------------------------------------
    def cut_websockets(self, count: int) -> None:
        """Cut `count` more chunks of websocket frames in the middle, one per socket."""
        with self._lock:
            self._websocket_chunks_to_cut += count

    def cut_snapshot_downloads(self, count: int) -> None:
        """Cut `count` more snapshot downloads inside their body."""
        with self._lock:
            self._downloads_to_cut += count

    def disarm(self) -> None:
        with self._lock:
            self._downloads_to_cut = 0
            self._websocket_chunks_to_cut = 0

    @property
    def open_websockets(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if link.websocket)

    # -- relaying ------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.counts.refused += 1
            writer.transport.abort()
            return
        link = Link(writer, up_writer)
        with self._lock:
            self._links.add(link)
        try:
            await asyncio.gather(self._client_to_service(link, reader),
                                 self._service_to_client(link, up_reader))
        finally:
            with self._lock:
                self._links.discard(link)
                if link.cut_download:  # the service went down before the cut: re-arm it
                    self._downloads_to_cut += 1
            link.abort()

    async def _client_to_service(self, link: Link, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                if not link.websocket:
                    self._inspect_request(link, chunk)
                link.upstream.write(chunk)
                await link.upstream.drain()
        except (ConnectionError, OSError):
            pass
        link.abort()

    def _inspect_request(self, link: Link, chunk: bytes) -> None:
        if WEBSOCKET_REQUEST.match(chunk):
            with self._lock:
                link.websocket = True
        elif SNAPSHOT_REQUEST.match(chunk):
            with self._lock:
                if self._downloads_to_cut > 0:
                    self._downloads_to_cut -= 1
                    link.cut_download = True
                    link.response_head.clear()
                    link.cut_at = None
                    link.relayed = 0

    async def _service_to_client(self, link: Link, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                if link.websocket and self._take_websocket_cut(link, chunk):
                    self._cut_mid_frame(link, chunk)
                    return
                if link.cut_download and self._relay_until_cut(link, chunk):
                    return
                if not link.cut_download:
                    link.client.write(chunk)
                await link.client.drain()
        except (ConnectionError, OSError):
            pass
        link.abort()

    def _take_websocket_cut(self, link: Link, chunk: bytes) -> bool:
        if not link.upgraded:
            link.upgraded = HEADER_END in chunk
            return False
        with self._lock:
            if self._websocket_chunks_to_cut <= 0:
                return False
            self._websocket_chunks_to_cut -= 1
            return True

    def _cut_mid_frame(self, link: Link, chunk: bytes) -> None:
        keep = self._rng.randint(1, len(chunk) - 1) if len(chunk) > 1 else 0
        link.client.write(chunk[:keep])
        self.counts.websocket_cuts += 1
        link.abort()

    def _relay_until_cut(self, link: Link, chunk: bytes) -> bool:
        """Relay a snapshot response up to a random point inside its body; True once cut."""
        if link.cut_at is None:
            link.response_head += chunk
            end = link.response_head.find(HEADER_END)
            if end < 0:
                return False
            body_start = end + len(HEADER_END)
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", bytes(link.response_head))
            size = int(length.group(1)) if length else 2
            link.cut_at = body_start + self._rng.randint(1, max(1, size - 1))
            chunk, link.relayed = bytes(link.response_head), 0
        keep = min(len(chunk), link.cut_at - link.relayed)
        link.client.write(chunk[:keep])
        link.relayed += keep
        if link.relayed >= link.cut_at:
            self.counts.download_cuts += 1
            link.cut_download = False
            link.abort()
            return True
        return False
