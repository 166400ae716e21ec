"""The service app under uvicorn for the HTTP API tests, with the settings flows read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import httpx
import pytest

from orchestrator.app import create_app
from tasks import resources
from velocity.runtimes import Runtime, get_runtime
from velocity.settings import Settings, get_settings
from velocity.tokens import mint_user_token

from .servers import RunningServer, free_port, start_server


@dataclass
class Api:
    settings: Settings
    server: RunningServer
    client: httpx.Client

    def user_headers(self, user_id: UUID, ttl: int = 600) -> dict[str, str]:
        token = mint_user_token(user_id, ttl, self.settings)
        return {"Authorization": f"Bearer {token}", "apikey": "anon-key-of-the-client"}

    def service_headers(self) -> dict[str, str]:
        return {"apikey": self.settings.api_service_key()}

    def runtime(self) -> Runtime:
        return get_runtime("process", self.settings)


@contextmanager
def running_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The app on a free port, serving the very settings the flows read: the `configured`
    environment (database, home, store) with VELOCITY_PUBLIC_URL pointing at this server."""
    port = free_port()
    monkeypatch.setenv("VELOCITY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    get_settings.cache_clear()
    resources.object_store.cache_clear()
    settings = get_settings()
    server = start_server(create_app(settings), port)
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as client:
            yield Api(settings, server, client)
    finally:
        runtime = get_runtime("process", settings)
        for container in runtime.list():
            runtime.stop(container.container_id, timeout=5, remove=True)
        server.stop()
