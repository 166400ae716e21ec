"""The service's ASGI app: the realtime gateway, signed downloads of the local store, and
(as they land) the HTTP API. `velocity serve` runs it with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from velocity.db import database_url
from velocity.download import download_router
from velocity.realtime.app import gateway_router, make_hub
from velocity.settings import Settings, get_settings
from velocity.storage import LocalStore, open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = open_store(settings)
    hub = make_hub(settings, database_url(settings), store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(title="Velocity file sync", version="0.1.0", lifespan=lifespan)
    app.state.hub = hub
    app.state.store = store
    app.include_router(gateway_router(hub))
    if isinstance(store, LocalStore):
        app.include_router(download_router(store))

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "listening": hub.listening.is_set(),
                "connected_agents": hub.connected_agents}

    return app
