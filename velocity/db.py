"""The one database access path: where the database is, migrations, and acting as someone.

Acting as a user is what PostgREST does per request: inside a transaction,
`set_config('role', 'authenticated', true)` and the JWT claims in `request.jwt.claims`, so
row-level security and `auth.uid()` apply for real. Acting as the service keeps the login role
(trusted) with no claims.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from velocity.cluster import LocalCluster
from velocity.errors import from_database_error
from velocity.settings import Settings, get_settings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# Any constant works; it only has to be the same for every runner.
MIGRATION_LOCK_KEY = 0x76656C6F63697479  # "velocity"


class MigrationError(RuntimeError):
    """A migration could not be applied, or an applied one was edited afterwards."""


def embedded_cluster(settings: Settings | None = None) -> LocalCluster:
    settings = settings or get_settings()
    return LocalCluster(settings.home / "pg")


def database_url(settings: Settings | None = None) -> str:
    """VELOCITY_DATABASE_URL, else the embedded cluster's URL (which must be started)."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    return embedded_cluster(settings).url()


# -- migrations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    return [Migration(path.name, path.read_text()) for path in sorted(directory.glob("*.sql"))]


def migrate(url: str, directory: Path = SQL_DIR) -> list[str]:
    """Apply every migration not yet applied, in name order; return the names applied.

    Each file runs in its own transaction and is recorded with its checksum. A session-level
    advisory lock makes concurrent runners safe: the second waits, then finds nothing to do.
    """
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                " filename text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            # Supabase grants new public tables to anon and authenticated; with RLS on and no
            # policy, only the migrating role (its owner) can read or change this table.
            conn.execute("ALTER TABLE public.schema_migrations ENABLE ROW LEVEL SECURITY")
            rows = conn.execute("SELECT filename, checksum FROM schema_migrations").fetchall()
            recorded: dict[str, str] = dict(rows)
            for migration in migrations:
                if migration.name in recorded:
                    if recorded[migration.name] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.name} was changed after it was applied "
                            f"(recorded checksum {recorded[migration.name][:12]}, file "
                            f"{migration.checksum[:12]}); add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    try:
                        conn.execute(migration.text.encode())
                    except psycopg.Error as error:
                        raise MigrationError(
                            f"migration {migration.name} failed: {error}") from error
                    conn.execute(
                        "INSERT INTO schema_migrations (filename, checksum) VALUES (%s, %s)",
                        (migration.name, migration.checksum),
                    )
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


# -- acting as someone --------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Whom a database call acts as: a user (RLS enforced) or the service (trusted)."""

    user_id: UUID | None

    @classmethod
    def user(cls, user_id: UUID | str) -> Actor:
        return cls(UUID(str(user_id)))

    @classmethod
    def service(cls) -> Actor:
        return cls(None)

    @property
    def is_service(self) -> bool:
        return self.user_id is None

    def claims(self) -> dict[str, str]:
        return {"sub": str(self.user_id), "role": "authenticated", "aud": "authenticated"}


class Database:
    """A connection pool and the one way to run work as an actor, in a transaction."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=True,
                                   kwargs={"autocommit": True})

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, actor: Actor | None = None) -> Iterator[psycopg.Connection]:
        """A connection inside a transaction that acts as `actor` (the service when None)."""
        with self.pool.connection() as conn:
            with conn.transaction():
                if actor is not None and not actor.is_service:
                    conn.execute(ACT_AS_USER, {"claims": json.dumps(actor.claims())})
                yield conn

    def call(self, actor: Actor, function: str, args: dict[str, object]) -> list[dict]:
        """Call a SQL function with named arguments as `actor`, in its own transaction.

        One round trip: the claims and the call travel as one simple-protocol query, which
        PostgreSQL runs as a single implicit transaction (so the claims are local to it).
        Values are bound client-side by psycopg's ClientCursor, with proper quoting.
        """
        query = _call_query(function, tuple(args), as_user=not actor.is_service)
        if not actor.is_service:
            args = {"claims": json.dumps(actor.claims()), **args}
        try:
            with self.pool.connection() as conn:
                with psycopg.ClientCursor(conn, row_factory=dict_row) as cursor:
                    cursor.execute(query, args)
                    if not actor.is_service:
                        cursor.nextset()
                    return cursor.fetchall()
        except psycopg.Error as error:
            typed = from_database_error(error)
            if typed is None:
                raise
            raise typed from error


ACT_AS_USER = ("SELECT set_config('role', 'authenticated', true),"
               " set_config('request.jwt.claims', %(claims)s, true)")


@lru_cache(maxsize=256)
def _call_query(function: str, names: tuple[str, ...], as_user: bool) -> str:
    """The SQL text of a named-argument call, rendered once (composing it costs ~0.3 ms)."""
    call = sql.SQL("SELECT * FROM {}({})").format(
        sql.Identifier(function),
        sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name))
            for name in names
        ),
    )
    text = call.as_string(None)
    return f"{ACT_AS_USER}; {text}" if as_user else text
