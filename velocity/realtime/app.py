"""The gateway as an ASGI router, and the hub wired to the database and object store."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, WebSocket

from velocity.db import Database
from velocity.realtime.connection import serve_websocket
from velocity.realtime.hub import Hub
from velocity.settings import Settings
from velocity.snapshots import build_snapshot, snapshot_url
from velocity.storage import ObjectStore

WEBSOCKET_PATH = "/realtime/v1/websocket"


def make_hub(settings: Settings, database_url: str, store: ObjectStore) -> Hub:
    snapshots_db: list[Database] = []

    def build(project_id: UUID) -> dict[str, Any]:
        if not snapshots_db:
            snapshots_db.append(Database(database_url, max_size=2))
        result = build_snapshot(snapshots_db[0], store, project_id)
        return {"url": snapshot_url(store, result, settings.snapshot_url_ttl_seconds),
                "sha256": result.sha256, "watermark": result.watermark,
                "snapshot_id": str(result.snapshot_id)}

    return Hub(settings, database_url, store, snapshot_builder=build)


def gateway_router(hub: Hub) -> APIRouter:
    router = APIRouter()

    @router.websocket(WEBSOCKET_PATH)
    async def realtime_websocket(websocket: WebSocket) -> None:
        await serve_websocket(websocket, hub)

    return router
