"""Legacy sources for the adoption tests, built from the seeds' descriptions with their mess:
the rich and RLS `project_files` variants, the frontend's `path`/`type` one, and the
`project-files` bucket on moto's S3 server."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
import psycopg
from moto.server import ThreadedMotoServer
from psycopg.types.json import Jsonb

from velocity.adoption.sources import LegacyBucket
from velocity.db import Database
from velocity.storage import ObjectStore, S3Store

from .conftest import with_database

BUCKET = "project-files"
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}

# Bytes that are not UTF-8, so the bucket's copy is a binary.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(255, -1, -1))


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def at(hour: int) -> str:
    return f"2024-03-0{1 + hour // 24} {hour % 24:02d}:00:00+00"


@contextmanager
def moto_bucket() -> Iterator[str]:
    """moto's S3 on loopback with an empty `project-files` bucket; yields its storage URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket=BUCKET)
    try:
        yield (f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1&path_style=true"
               f"&access_key_id=testing&secret_access_key=testing")
    finally:
        server.stop()


def new_database(server_url: str, label: str) -> str:
    name = f"legacy_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_fingerprint(url: str) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every row of every table: equal means byte-for-byte untouched."""
    with psycopg.connect(url) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")]
        return {table: conn.execute(  # type: ignore[misc]
            f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
            f" FROM {table} t").fetchone() for table in tables}


def store_fingerprint(store: ObjectStore) -> dict[str, str]:
    """The sha256 of every object by key (read as the adoption reads legacy keys)."""
    bucket = LegacyBucket(store, "")
    return {key: bucket.sha256(key)[0] for key in store.list()}


def target_fingerprint(db: Database, store: ObjectStore) -> tuple:
    """Every project, member, file version and event of the target, and its stored objects."""
    with db.transaction() as conn:
        tables = tuple(conn.execute(
            f"SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {name} t"
        ).fetchone() for name in ("projects", "project_members", "project_files", "file_events"))
    return tables, store_fingerprint(store)


@dataclass(frozen=True)
class People:
    alice: uuid.UUID   # owner of every project, a target user
    bob: uuid.UUID     # another target user, author of some versions
    ghost: uuid.UUID   # a legacy author the target does not know


# -- the rich variant (core_database_schema.sql) ------------------------------------------------

RICH_SCHEMA = """
CREATE TABLE projects (id uuid PRIMARY KEY, name text NOT NULL, owner_id uuid);
CREATE TABLE project_files (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL REFERENCES projects (id),
  file_path text NOT NULL,
  file_name text,
  file_type text,
  file_size bigint,
  content text,
  content_hash text,
  encoding text DEFAULT 'utf-8',
  version integer DEFAULT 1,
  parent_version_id uuid REFERENCES project_files (id),
  is_current_version boolean DEFAULT true,
  directory_path text,
  is_directory boolean DEFAULT false,
  is_binary boolean DEFAULT false,
  embedding real[],          -- vector(1536) in the seeds; pgvector is not needed here
  ai_analysis jsonb,
  created_by uuid,           -- NOT NULL in the seeds, but most inserts gave none
  last_modified_by uuid,
  created_at timestamptz DEFAULT now(),
  updated_at timestamptz DEFAULT now()
);
"""


@dataclass(frozen=True)
class RichSource:
    url: str
    created: uuid.UUID     # in the source's projects, not in the target: created
    existing: uuid.UUID    # already in the target with some files
    bucket_only: uuid.UUID  # in the source's projects and the bucket, no rows
    ids: dict[str, str]    # legacy row ids by a name the tests use


def build_rich_source(server_url: str, people: People, existing: uuid.UUID) -> RichSource:
    url = new_database(server_url, "rich")
    created, bucket_only = uuid.uuid4(), uuid.uuid4()
    ids: dict[str, str] = {}
    p = people
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RICH_SCHEMA)
        for project, name in ((created, "Landing page"), (existing, "Shop"),
                              (bucket_only, "Bucket only")):
            conn.execute("INSERT INTO projects VALUES (%s, %s, %s)", (project, name, p.alice))

        def row(label: str, project: uuid.UUID, path: str, content: str | None, *,
                version: int = 1, current: bool = True, hash_: str | None = None,
                author: uuid.UUID | None = None, hour: int = 0, directory: bool = False,
                binary: bool = False, file_type: str | None = None) -> None:
            stored = hash_ if hash_ is not None else (sha256(content) if content else None)
            (ids[label],) = conn.execute(
                "INSERT INTO project_files (project_id, file_path, file_name, file_type,"
                " content, content_hash, version, is_current_version, is_directory, is_binary,"
                " created_by, last_modified_by, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id::text",
                (project, path, path.rsplit("/", 1)[-1], file_type, content, stored, version,
                 current, directory, binary, author, author, at(hour), at(hour)),
            ).fetchone()  # type: ignore[misc]

        # A history of three versions by alice, bob and nobody; the last hash is wrong.
        row("app1", created, "src/App.tsx", "export default 1", current=False,
            author=p.alice, hour=1, file_type="typescript")
        row("app2", created, "src/App.tsx", "export default 2", version=2, current=False,
            author=p.bob, hour=2, file_type="typescript")
        row("app3", created, "src/App.tsx", "export default 3", version=3, hash_="deadbeef",
            author=None, hour=3, file_type="typescript")
        # Two current rows of one path: the newest wins, the other stays as history.
        row("index_old", created, "index.html", "<h1>old</h1>", author=p.ghost, hour=1)
        row("index_new", created, "index.html", "<h1>new</h1>", author=p.bob, hour=5)
        # Unchanged content across versions: one version, as the write functions would.
        row("notes1", created, "notes.txt", "same", current=False, author=p.alice, hour=1)
        row("notes2", created, "notes.txt", "same", version=2, author=p.alice, hour=2)
        # No row flagged current: the newest is made current.
        row("css1", created, "styles/app.css", "a{}", current=False, author=p.alice, hour=1)
        row("css2", created, "styles/app.css", "b{}", version=2, current=False,
            author=p.alice, hour=2)
        row("dir", created, "src", None, directory=True, author=p.alice)
        row("logo", created, "assets/logo.png", None, hash_=sha256(PNG), binary=True,
            author=p.alice, hour=4, file_type="image")
        row("abs", created, "/README.md", "# readme", author=p.alice)
        row("dots", created, "../secret.txt", "s3cret", author=p.alice)

        row("same", existing, "index.html", "<p>same</p>", author=p.alice)
        row("differs", existing, "main.js", "legacy()", author=p.alice)
        row("lib", existing, "lib.js", "export const lib = 1", author=p.bob, hour=6)
    return RichSource(url, created, existing, bucket_only, ids)


def fill_bucket(store: ObjectStore, rich: RichSource) -> None:
    """The `project-files` bucket as the preview container read it: `{project}/{path}`."""
    store.put_bytes(f"{rich.created}/assets/logo.png", PNG)
    store.put_bytes(f"{rich.existing}/lib.js", b"export const lib = 0")  # differs
    store.put_bytes(f"{rich.existing}/extra.txt", b"only here")
    store.put_bytes(f"{rich.bucket_only}/index.html", b"<h1>from the bucket</h1>")
    store.put_bytes(f"{rich.bucket_only}/img/a.png", PNG)
    # A key our own stores refuse (a backslash), as a Windows upload left it.
    assert isinstance(store, S3Store)
    store.client.put_object(Bucket=BUCKET, Key=f"{rich.bucket_only}/bad\\name.txt",
                            Body=b"windows")
    store.put_bytes("readme.txt", b"not in a project folder")


# -- the RLS variant (database_schema_with_rls.sql) ---------------------------------------------

RLS_SCHEMA = """
CREATE TABLE project_files (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL,
  file_path text NOT NULL,
  content text,
  file_type text,
  size_bytes integer,
  version integer DEFAULT 1,
  parent_version_id uuid REFERENCES project_files (id),
  checksum text,
  metadata jsonb DEFAULT '{}',
  created_at timestamptz DEFAULT now(),
  updated_at timestamptz DEFAULT now()
);
"""


@dataclass(frozen=True)
class RlsSource:
    url: str
    project: uuid.UUID
    ids: dict[str, str]


def build_rls_source(server_url: str, store: ObjectStore) -> RlsSource:
    url = new_database(server_url, "rls")
    project = uuid.uuid4()
    ids: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RLS_SCHEMA)

        def row(label: str, path: str, content: str | None, *, version: int = 1,
                checksum: str | None = None, hour: int = 0, file_type: str | None = None,
                metadata: dict | None = None) -> None:
            stored = checksum if checksum is not None else (sha256(content) if content else None)
            (ids[label],) = conn.execute(
                "INSERT INTO project_files (project_id, file_path, content, file_type,"
                " size_bytes, version, checksum, metadata, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id::text",
                (project, path, content, file_type, len((content or "").encode()), version,
                 stored, Jsonb(metadata or {}), at(hour), at(hour)),
            ).fetchone()  # type: ignore[misc]

        row("app1", "app.js", "let a = 1", hour=1)
        row("app2", "app.js", "let a = 2", version=2, checksum="md5:0123", hour=2)
        row("dup1", "dup.txt", "one", hour=1)
        row("dup2a", "dup.txt", "two-a", version=2, hour=2)
        row("dup2b", "dup.txt", "two-b", version=2, hour=3)
        row("photo", "images/photo.jpg", None, file_type="image",
            metadata={"storage_path": f"{project}/images/photo.jpg", "is_binary": True})
        row("gone", "missing.png", None, metadata={"storage_path": f"{project}/missing.png"})
        row("folder", "components", None, file_type="directory")
        row("empty", "bad//path.js", "x")
        row("a", "a", "a file")
        row("ab", "a/b.js", "below a file")
    store.put_bytes(f"{project}/images/photo.jpg", JPEG)
    return RlsSource(url, project, ids)


# -- the frontend's variant (path / type) -------------------------------------------------------

FRONTEND_SCHEMA = """
CREATE TABLE project_files (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL,
  path text NOT NULL,
  type text,
  content text,
  user_id uuid,
  created_at timestamptz DEFAULT now(),
  updated_at timestamptz DEFAULT now()
);
"""


@dataclass(frozen=True)
class FrontendSource:
    url: str
    project: uuid.UUID
    ids: dict[str, str]


def build_frontend_source(server_url: str, people: People,
                          project: uuid.UUID) -> FrontendSource:
    url = new_database(server_url, "frontend")
    ids: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FRONTEND_SCHEMA)

        def row(label: str, path: str, file_type: str | None, content: str | None,
                user: uuid.UUID | None, hour: int) -> None:
            (ids[label],) = conn.execute(
                "INSERT INTO project_files (project_id, path, type, content, user_id,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id::text",
                (project, path, file_type, content, user, at(hour), at(hour)),
            ).fetchone()  # type: ignore[misc]

        # The store upserted without versions: the same path twice, both "current".
        row("main_old", "src/main.tsx", "typescript", "render(1)", people.bob, 1)
        row("main_new", "src/main.tsx", "typescript", "render(2)", None, 2)
        row("src", "src", "folder", None, people.alice, 0)
        row("pkg", "package.json", "file", '{"name": "app"}', people.alice, 1)
        row("util", "/src/util.ts", "typescript", "export {}", people.alice, 1)
        row("win", "lib\\win.js", "javascript", "win()", people.alice, 1)
        row("ctrl", "bad\x01name.js", "javascript", "x", people.alice, 1)
    return FrontendSource(url, project, ids)
