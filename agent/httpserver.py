"""A stdlib HTTP server on a background thread, for the static site and /healthz."""

from __future__ import annotations

import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    """Daemon threads per request; a client hanging up mid-response is not an error."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a page loads many modules at once; 5 drops SYNs

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class BackgroundHTTPServer:
    """Binds at construction (so the port is known and conflicts surface at once), serves
    on a daemon thread from `start()` until `stop()`."""

    def __init__(
        self,
        server: QuietHTTPServer,
        name: str,
    ) -> None:
        self.server = server
        server.timeout = 0  # handle_request() is called only once a connection is waiting
        self._stop_reader, self._stop_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @classmethod
    def bind(
        cls, port: int, handler: type[BaseHTTPRequestHandler], name: str
    ) -> BackgroundHTTPServer:
        return cls(QuietHTTPServer(("127.0.0.1", port), handler), name)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop_writer.send(b"\0")
            self._thread.join()
        self.server.server_close()
        self._stop_reader.close()
        self._stop_writer.close()

    def _serve(self) -> None:
        """Sleep until a connection or stop(). Not serve_forever: it wakes every poll
        interval to look for a shutdown request, and a hundred agents on one host, each with
        two servers polling every 50 ms, spent a fifth of a core doing nothing."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ)
            selector.register(self._stop_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._stop_reader for key, _ in ready):
                    return
                self.server.handle_request()
