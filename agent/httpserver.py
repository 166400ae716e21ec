"""A stdlib HTTP server on a background thread, for the static site and /healthz."""

from __future__ import annotations

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
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

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
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
