"""The database pool and object store that tasks share within one process."""

from __future__ import annotations

from functools import lru_cache

from velocity.db import Database, database_url
from velocity.settings import get_settings
from velocity.snapshots import EntryCache, open_entry_cache
from velocity.storage import ObjectStore, open_store


@lru_cache(maxsize=4)
def database(url: str | None = None) -> Database:
    """One pool per database URL per process (the default: the configured database)."""
    return Database(url or database_url(), max_size=10)


@lru_cache(maxsize=1)
def object_store() -> ObjectStore:
    return open_store()


@lru_cache(maxsize=1)
def entry_cache() -> EntryCache:
    return open_entry_cache(get_settings())
