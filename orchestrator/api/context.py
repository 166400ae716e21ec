"""What every route needs from its app: settings, the database, the flow runner, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from orchestrator.metrics import Metrics
from orchestrator.workflows import WorkflowRunner
from velocity.db import Database
from velocity.settings import Settings


@dataclass
class Services:
    settings: Settings
    runner: WorkflowRunner
    metrics: Metrics
    db: Database | None = None  # opened by the app's lifespan


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def database(request: Request) -> Database:
    db = services(request).db
    if db is None:
        raise RuntimeError("the app's lifespan has not opened the database")
    return db
