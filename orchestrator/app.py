"""The service's ASGI app: the realtime gateway, signed downloads of the local store, the HTTP
API (sessions, webhooks, PostgREST-style RPCs), metrics and the /play page. `velocity serve`
runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from orchestrator.api import Services, api_router, install_error_handlers
from orchestrator.metrics import Metrics, metrics_router
from orchestrator.play.routes import play_router
from orchestrator.workflows import WorkflowRunner, make_runner
from velocity.db import Database, database_url
from velocity.download import download_router
from velocity.realtime.app import gateway_router, make_hub
from velocity.settings import Settings, get_settings
from velocity.storage import LocalStore, open_store

API_POOL_SIZE = 10


def create_app(settings: Settings | None = None,
               runner: WorkflowRunner | None = None) -> FastAPI:
    settings = settings or get_settings()
    url = database_url(settings)
    store = open_store(settings)
    hub = make_hub(settings, url, store)
    metrics = Metrics(hub)
    metrics.watch_hub(hub)
    services = Services(settings=settings, metrics=metrics,
                        runner=runner or make_runner(settings,
                                                     on_finished=metrics.observe_flow_run))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        services.db = Database(url, max_size=API_POOL_SIZE)
        metrics.watch_gc()
        try:
            yield
        finally:
            metrics.unwatch_gc()
            await services.runner.aclose()
            await hub.stop()
            await run_in_threadpool(services.db.close)

    app = FastAPI(title="Velocity file sync", version="0.1.0", lifespan=lifespan)
    app.state.hub = hub
    app.state.store = store
    app.state.services = services
    install_error_handlers(app)
    app.include_router(gateway_router(hub))
    if isinstance(store, LocalStore):
        app.include_router(download_router(store))
    app.include_router(api_router())
    app.include_router(metrics_router(metrics))
    app.include_router(play_router())

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "listening": hub.listening.is_set(),
                "connected_agents": hub.connected_agents}

    return app
