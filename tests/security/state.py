"""Fingerprints of everything a refused input must leave alone: every table, a store, a tree."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from velocity.db import Database

# Every table an input could reach, directly or through an RPC, a flow or the gateway.
TABLES = ("auth.users", "public.user_profiles", "public.projects", "public.project_members",
          "public.project_files", "public.file_events", "public.project_snapshots",
          "public.preview_sessions", "public.feature_flags", "public.feature_flag_rollouts",
          "internal.config", "internal.file_types", "internal.webhook_deliveries",
          "internal.rate_limit_buckets", "public.schema_migrations")


def database_fingerprint(db: Database) -> dict[str, str]:
    """Row count and a digest of every row of every table: equal means nothing changed."""
    fingerprint: dict[str, str] = {}
    with db.transaction() as conn:
        for table in TABLES:
            (value,) = conn.execute(
                f"SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, '|'"
                f" ORDER BY r::text)), '-') FROM {table} r").fetchone()
            fingerprint[table] = value
    return fingerprint


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Every entry below `root` (a store's directory, a project tree) with its kind and bytes."""
    if not root.exists():
        return {}
    entries: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            entries[relative] = "link:" + str(path.readlink())
        elif path.is_dir():
            entries[relative] = "dir"
        else:
            entries[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@contextmanager
def unchanged(db: Database, *trees: Path) -> Iterator[None]:
    """Assert that the block leaves the database and the given directory trees as they were."""
    database_before = database_fingerprint(db)
    trees_before = [tree_fingerprint(tree) for tree in trees]
    yield
    database_after = database_fingerprint(db)
    changed = [table for table in TABLES if database_before[table] != database_after[table]]
    assert not changed, f"tables changed by a refused input: {changed}"
    for tree, before in zip(trees, trees_before, strict=True):
        assert tree_fingerprint(tree) == before, f"{tree} changed by a refused input"
