"""The agent's status: what `/healthz` answers and what `velocity:status` pushes."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from agent.httpserver import BackgroundHTTPServer

DevServerState = Literal["starting", "running", "restarting", "failed", "stopped"]


@dataclass(frozen=True)
class AgentStatus:
    """The report's fields, exactly as docs/realtime.md names them."""

    ready: bool = False
    applied_seq: int | None = None
    lag_ms: int | None = None
    dev_server: DevServerState = "stopped"
    error: str | None = None
    hydrations: int = 0

    def as_payload(self) -> dict[str, Any]:
        return asdict(self)


class StatusBoard:
    """Holds the current AgentStatus; replaced whole on each change, so a reader on another
    thread (the health server) always sees one consistent report."""

    def __init__(self) -> None:
        self._status = AgentStatus()
        self._lock = threading.Lock()

    @property
    def current(self) -> AgentStatus:
        return self._status

    def update(self, **changes: Any) -> AgentStatus:
        with self._lock:
            self._status = replace(self._status, **changes)
            return self._status


def health_server(board: StatusBoard, port: int) -> BackgroundHTTPServer:
    """`GET /healthz` on 127.0.0.1:port: the status as JSON, 200 when ready, else 503."""

    class HealthHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                self._send(404, {"error": "not found"})
                return
            status = board.current
            self._send(200 if status.ready else 503, status.as_payload())

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return BackgroundHTTPServer.bind(port, HealthHandler, "agent-health")
