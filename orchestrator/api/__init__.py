"""The HTTP API: sessions, webhooks and the PostgREST-compatible file RPCs."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api import rpc, sessions, webhooks
from orchestrator.api.context import Services
from orchestrator.api.errors import install_error_handlers

__all__ = ["Services", "api_router", "install_error_handlers"]


def api_router() -> APIRouter:
    router = APIRouter()
    router.include_router(sessions.router)
    router.include_router(webhooks.router)
    router.include_router(rpc.router)
    return router
