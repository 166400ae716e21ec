"""The database pool and object store that tasks share within one process."""

from __future__ import annotations

from functools import lru_cache

from velocity.db import Database, database_url
from velocity.storage import ObjectStore, open_store


@lru_cache(maxsize=4)
def database(url: str | None = None) -> Database:
    """One pool per database URL per process (the default: the configured database)."""
    return Database(url or database_url(), max_size=10)


@lru_cache(maxsize=1)
def object_store() -> ObjectStore:
    return open_store()

