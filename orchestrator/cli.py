"""The `velocity` command line: the embedded database, migrations and admin tasks."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar
from uuid import UUID

import psycopg
import typer
from rich.console import Console

from velocity import accounts
from velocity.cluster import ClusterError
from velocity.db import Database, MigrationError, database_url, embedded_cluster, migrate
from velocity.errors import VelocityError

app = typer.Typer(help="Velocity file sync: PostgreSQL-backed project files, live in previews.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The embedded PostgreSQL cluster under VELOCITY_HOME/pg.",
                     no_args_is_help=True)
admin_app = typer.Typer(help="Create users and projects.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Project snapshots: deterministic zips with a watermark.",
                           no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(snapshot_app, name="snapshot")
image_app = typer.Typer(help="The agent image of the docker runtime, built locally.",
                        no_args_is_help=True)
app.add_typer(image_app, name="image")

# soft_wrap: an error stays one line however long its paths or URLs, as scripts grep it.
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="PostgreSQL URL; default VELOCITY_DATABASE_URL, "
                 "else the embedded cluster."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def clear_errors(command: F) -> F:
    """Turn known failures into one line on stderr and exit code 1, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (VelocityError, ClusterError, MigrationError) as error:
            err.print(f"[red]error:[/red] {error}", highlight=False)
        except psycopg.OperationalError as error:
            err.print(f"[red]error:[/red] cannot reach the database: {error}".strip(),
                      highlight=False)
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def _url(option: str | None) -> str:
    return option or database_url()


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        typer.echo(text)


@image_app.command("build")
@clear_errors
def image_build(
    docker_host: Annotated[str | None, typer.Option(
        help="Docker engine URL; default VELOCITY_DOCKER_HOST, else DOCKER_HOST or the "
        "engine's default socket.")] = None,
    cache_dir: Annotated[str | None, typer.Option(
        help="Where the base rootfs tarball is kept; default ~/.cache/velocity.")] = None,
    mirror: Annotated[str, typer.Option(help="Debian mirror debootstrap uses.")]
    = "http://deb.debian.org/debian",
    as_json: JsonOption = False,
) -> None:
    """Build the agent image (velocity-agent:<content hash>) with no registry: a debootstrapped
    Debian base (once, needs root), then this checkout's agent; a no-op when it is current."""
    from pathlib import Path

    import docker

    from velocity.runtimes.agent_image import build_agent_image, default_cache_dir
    from velocity.settings import get_settings

    url = docker_host or get_settings().docker_host
    try:
        client = docker.DockerClient(base_url=url, timeout=600) if url else \
            docker.from_env(timeout=600)
    except docker.errors.DockerException as error:
        raise VelocityError(f"cannot reach the Docker engine {url or ''}: {error}") from None
    try:
        built = build_agent_image(client, Path(cache_dir) if cache_dir else default_cache_dir(),
                                  mirror, log=lambda line: err.print(line, highlight=False))
    finally:
        client.close()
    data = {"image": built.tag, "base": built.base_tag, "built": built.built,
            "seconds": round(built.seconds, 2)}
    _emit(as_json, data, built.tag)


@db_app.command("start")
@clear_errors
def db_start() -> None:
    """Create the cluster on first use and start it; print its URL."""
    cluster = embedded_cluster()
    cluster.start()
    typer.echo(cluster.url())


@db_app.command("stop")
@clear_errors
def db_stop() -> None:
    """Stop the cluster (its data stays)."""
    embedded_cluster().stop()
    typer.echo("stopped")


@db_app.command("url")
@clear_errors
def db_url() -> None:
    """Print the database URL everything uses."""
    typer.echo(database_url())


@db_app.command("status")
@clear_errors
def db_status(as_json: JsonOption = False) -> None:
    """Say whether the embedded cluster exists and runs (exit 1 when it does not run)."""
    cluster = embedded_cluster()
    state = cluster.state()
    running = cluster.is_running()
    data = {"running": running, "directory": str(cluster.root),
            "port": state.port if state else None, "bin_dir": state.bin_dir if state else None}
    _emit(as_json, data, f"{'running' if running else 'stopped'}: {cluster.root}"
          + (f" on 127.0.0.1:{state.port}" if state and running else ""))
    if not running:
        raise typer.Exit(1)


@app.command("demo")
@clear_errors
def demo(as_json: JsonOption = False) -> None:
    """Run the main job end to end on the embedded stack and print its timings."""
    from orchestrator.demo import print_report, run_demo

    report = run_demo(err if as_json else Console())
    if as_json:
        sys.stdout.write(json.dumps(report.as_json()) + "\n")
    else:
        print_report(Console(), report)
    if report.status != "ok":
        raise typer.Exit(1)


@app.command("up")
@clear_errors
def up(
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.", min=1, max=65535)] = 8000,
    serve_flows: Annotated[bool, typer.Option(
        help="Also serve every flow's deployment (the cleanup schedule).")] = True,
    dev_login: Annotated[bool | None, typer.Option(
        "--dev-login/--no-dev-login",
        help="Let /play sign anyone in by email (VELOCITY_DEV_LOGIN). Default: on when HOST "
             "and VELOCITY_PUBLIC_URL are loopback addresses; refused otherwise.")] = None,
) -> None:
    """Run the whole stack on this machine until Ctrl-C: PostgreSQL, migrations, a Prefect
    server on that PostgreSQL, the API with the realtime gateway and the /play page, and
    flow serving."""
    import uvicorn

    from orchestrator.stack import EmbeddedStack, settings_for_address
    from velocity.settings import is_loopback_host, is_loopback_url

    public_url = os.environ.get("VELOCITY_PUBLIC_URL") or f"http://{host}:{port}"
    only_here = is_loopback_host(host) and is_loopback_url(public_url)
    if dev_login is None:
        dev_login = only_here
    elif dev_login and not only_here:
        raise typer.BadParameter("the dev login signs anyone in as anyone: it needs a loopback "
                                 f"HOST and public URL, not {host} and {public_url}",
                                 param_hint="--dev-login")
    os.environ["VELOCITY_DEV_LOGIN"] = "1" if dev_login else "0"
    settings = settings_for_address(host, port)
    stack = EmbeddedStack(settings)
    console = Console()
    try:
        with console.status("starting PostgreSQL and applying migrations"):
            stack.start_database()
        with console.status("starting the Prefect server on PostgreSQL"):
            prefect = stack.start_prefect()
        if serve_flows:
            stack.start_flow_serving()
        from orchestrator.app import create_app  # after PREFECT_API_URL is set: see stack.py

        server = uvicorn.Server(uvicorn.Config(
            create_app(settings), host=host, port=port, log_level="warning",
            ws_max_size=1024 * 1024, ws_ping_interval=None, ws_per_message_deflate=False))

        def announce_when_listening() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.05)  # waiting for uvicorn to bind, to print only true URLs
            if server.started:
                console.print(f"API and docs     http://{host}:{port}/docs")
                console.print(f"Realtime gateway {settings.realtime_url()}")
                console.print(f"Prefect UI       {prefect.ui_url}")
                console.print(f"Metrics          http://{host}:{port}/metrics")
                console.print(f"Editor (play)    http://{host}:{port}/play"
                              + ("  (dev login on)" if settings.dev_login else ""))
                console.print("Press Ctrl-C to stop everything.")

        threading.Thread(target=announce_when_listening, daemon=True).start()
        server.run()
    finally:
        with console.status("stopping"):
            stack.stop()


@app.command("serve")
@clear_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Run the service: the realtime gateway, signed downloads and the HTTP API.

    With no VELOCITY_DATABASE_URL, the embedded PostgreSQL is started and migrated first.
    VELOCITY_PUBLIC_URL defaults to http://HOST:PORT.
    """
    import gc

    import uvicorn

    from orchestrator.stack import settings_for_address

    settings = settings_for_address(host, port)
    from orchestrator.app import create_app

    if not settings.database_url:
        embedded_cluster(settings).start()
    migrate(database_url(settings))
    service = create_app(settings)
    # What is loaded by now (modules, classes, functions) lives as long as the process: frozen,
    # a full garbage collection no longer traverses it, and its pause stalls fewer edits.
    gc.freeze()
    uvicorn.run(service, host=host, port=port, log_level="info",
                ws_max_size=1024 * 1024, ws_ping_interval=None,
                # Deflate is per connection: it would compress each frame once per subscriber
                # and undo encode-once fan-out. Phoenix heartbeats replace websocket pings.
                ws_per_message_deflate=False)


@app.command("migrate")
@clear_errors
def migrate_command(database_url_option: DatabaseUrlOption = None) -> None:
    """Apply sql/*.sql in name order, each once; refuse edited, already-applied files."""
    applied = migrate(_url(database_url_option))
    typer.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied
                                                         else "; the database is up to date"))


@admin_app.command("create-user")
@clear_errors
def create_user(email: str, database_url_option: DatabaseUrlOption = None,
                as_json: JsonOption = False) -> None:
    """Create a user (auth.users and a profile); print its id."""
    with Database(_url(database_url_option), max_size=1) as db:
        user_id = accounts.create_user(db, email)
    _emit(as_json, {"user_id": str(user_id)}, str(user_id))


@admin_app.command("create-project")
@clear_errors
def create_project(
    name: str,
    owner: Annotated[str, typer.Option("--owner", help="User id of the owner.")],
    member: Annotated[list[str] | None, typer.Option(
        "--member", help="USER_ID:ROLE with ROLE owner, editor or viewer; repeatable.")] = None,
    template: Annotated[str | None, typer.Option(help="Template name recorded on the project.")]
    = None,
    database_url_option: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a project owned by --owner; print its id."""
    members = [accounts.parse_member(spec) for spec in member or []]
    with Database(_url(database_url_option), max_size=1) as db:
        project_id = accounts.create_project(db, name, owner, members, template=template)
    _emit(as_json, {"project_id": str(project_id)}, str(project_id))


@snapshot_app.command("build")
@clear_errors
def snapshot_build(
    project_id: str,
    force: Annotated[bool, typer.Option(help="Build even if the last snapshot matches.")] = False,
    ttl: Annotated[int, typer.Option(help="Lifetime of the signed URL, in seconds.", min=1,
                                     max=7 * 24 * 3600)] = 900,
    database_url_option: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build (or reuse) a project's snapshot; print it with a signed download URL."""
    from velocity.snapshots import build_snapshot
    from velocity.storage import open_store

    try:
        project = UUID(project_id)
    except ValueError:
        raise VelocityError(f"not a project id: {project_id!r}") from None
    store = open_store()
    with Database(_url(database_url_option), max_size=2) as db:
        result = build_snapshot(db, store, project, force=force)
    data = {"snapshot_id": str(result.snapshot_id), "watermark": result.watermark,
            "files": result.files, "bytes": result.bytes, "sha256": result.sha256,
            "reused": result.reused, "url": store.signed_url(result.storage_key, ttl),
            "seconds": round(result.seconds, 4)}
    _emit(as_json, data, "\n".join(f"{key}: {value}" for key, value in data.items()))


@app.command("adopt")
@clear_errors
def adopt_command(
    from_database: Annotated[str | None, typer.Option(
        "--from-database", metavar="URL",
        help="Legacy PostgreSQL whose project_files (rich, RLS or path/type variant) is "
        "adopted; read in read-only transactions.")] = None,
    from_storage: Annotated[str | None, typer.Option(
        "--from-storage", metavar="URL",
        help="Legacy bucket laid out {project_id}/{file_path}, e.g. "
        "s3://project-files?endpoint=URL (or local:///dir); never written.")] = None,
    project: Annotated[list[str] | None, typer.Option(
        "--project", metavar="ID", help="Adopt only this project; repeatable.")] = None,
    fix_paths: Annotated[bool, typer.Option(
        "--fix-paths", help="Normalise fixable paths (backslashes, leading or trailing "
        "slashes, empty and '.' segments) instead of rejecting them.")] = False,
    owner: Annotated[str | None, typer.Option(
        "--owner", metavar="USER_ID", help="Owner of projects the target lacks when the "
        "source names no owner the target knows.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Change nothing; report what would be adopted.")] = False,
    undo: Annotated[str | None, typer.Option(
        "--undo", metavar="BATCH_ID", help="Remove exactly what that batch added, or refuse "
        "and change nothing if later writes came after it.")] = None,
    database_url_option: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adopt legacy project files into this database as one batch (undoable), or undo one.

    Versions, authors and timestamps are kept; every path is checked as the RPCs check it;
    the report lists conflicts, rejected paths and stored hashes that were wrong. Exit code 1
    when a project failed (the rest is adopted; running again adopts what is missing).
    """
    from rich.progress import Progress

    from velocity.adoption import (
        AdoptionOptions,
        LegacySources,
        adopt,
        render_report,
        undo_batch,
    )
    from velocity.settings import get_settings
    from velocity.storage import open_store

    def parse_id(text: str, what: str) -> UUID:
        try:
            return UUID(text)
        except ValueError:
            raise VelocityError(f"{what}: {text!r} is not an id") from None

    if undo is not None:
        if from_database or from_storage or project or fix_paths or owner or dry_run:
            raise VelocityError("--undo takes only --database-url and --json")
        with Database(_url(database_url_option), max_size=1) as db:
            undone = undo_batch(db, open_store(), parse_id(undo, "--undo"))
        _emit(as_json, undone.model_dump(mode="json"), "\n".join(
            [f"batch {undone.batch_id} undone"]
            + [f"project {p.project_id}: {p.files_removed} file version(s) and "
               f"{p.events_removed} event(s) removed"
               + (", project removed" if p.project_removed else "") for p in undone.projects]
            + [f"{len(undone.objects_removed)} copied object(s) removed"]))
        return
    options = AdoptionOptions(
        project_ids=[parse_id(p, "--project") for p in project] if project else None,
        fix_paths=fix_paths, owner=parse_id(owner, "--owner") if owner else None,
        dry_run=dry_run)
    with LegacySources.open(from_database, from_storage, get_settings()) as sources, \
            Database(_url(database_url_option), max_size=2) as db, \
            Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        bar = progress.add_task("adopting", total=None)

        def advance(index: int, total: int, project_id: UUID) -> None:
            progress.update(bar, total=total, completed=index,
                            description=f"project {project_id}")

        report = adopt(db, open_store(), sources, options, on_project=advance)
    if as_json:
        sys.stdout.write(report.model_dump_json() + "\n")
    else:
        render_report(Console(), report)
    if report.totals.projects_failed:
        raise typer.Exit(1)
