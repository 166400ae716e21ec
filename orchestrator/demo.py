"""`velocity demo`: the main job end to end on the embedded stack, with timings.

It starts PostgreSQL, a Prefect server on it and the service; creates a demo user and a
project from the `static` template; starts a preview session through the HTTP API (a
provision-session flow run, visible in the Prefect UI) and waits for it to be active; makes
50 edits, a delete and a bulk change through the PostgREST-compatible RPC endpoint, as a
frontend's `supabase.rpc(...)` would, timing each until the bytes are on the agent's disk;
then stops the session. Every step is checked; any mismatch makes the status "mismatch".
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from orchestrator.stack import EmbeddedStack, free_port, settings_for_address
from velocity import accounts
from velocity.db import Database
from velocity.settings import Settings
from velocity.tokens import mint_user_token

EDITS = 50
ACTIVE_TIMEOUT = 90.0
DISK_TIMEOUT = 10.0


class DemoFailed(RuntimeError):
    """A step of the demo did not do what it should; the message says which."""


@dataclass
class DemoReport:
    status: str = "running"
    session_start_seconds: float = 0.0
    snapshot_seconds: float | None = None
    edits: int = 0
    files_verified: int = 0
    edit_ms: list[float] = field(default_factory=list)
    flow_run_id: str | None = None
    error: str | None = None

    def percentiles(self) -> dict[str, float]:
        if len(self.edit_ms) < 2:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        cuts = statistics.quantiles(self.edit_ms, n=100, method="inclusive")
        return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2), "p99": round(cuts[98], 2)}

    def as_json(self) -> dict[str, Any]:
        data = {"status": self.status,
                "session_start_seconds": round(self.session_start_seconds, 3),
                "snapshot_seconds": (round(self.snapshot_seconds, 3)
                                     if self.snapshot_seconds is not None else None),
                "edit_latency_ms": self.percentiles(), "edits": self.edits,
                "files_verified": self.files_verified, "flow_run_id": self.flow_run_id}
        if self.error:
            data["error"] = self.error
        return data


class Demo:
    def __init__(self, console: Console, settings: Settings, port: int) -> None:
        self.console = console
        self.settings = settings
        self.port = port
        self.report = DemoReport()

    def run(self) -> DemoReport:
        import uvicorn

        port = self.port
        settings = self.settings
        stack = EmbeddedStack(settings)
        server: uvicorn.Server | None = None
        serving: threading.Thread | None = None
        try:
            with self.console.status("starting PostgreSQL and applying migrations"):
                stack.start_database()
            with self.console.status("starting the Prefect server on PostgreSQL"):
                stack.start_prefect()
            with self.console.status("starting the API and the realtime gateway"):
                from orchestrator.app import create_app  # after PREFECT_API_URL: stack.py

                server = uvicorn.Server(uvicorn.Config(
                    create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                    ws_ping_interval=None, ws_per_message_deflate=False))
                serving = threading.Thread(target=server.run, daemon=True)
                serving.start()
                _wait(lambda: server.started, 30, "the API to start")
            with Database(stack.database_url, max_size=2) as db, \
                    httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
                self._run_steps(db, api, settings)
        except DemoFailed as failure:
            self.report.status = "mismatch"
            self.report.error = str(failure)
        finally:
            if server is not None and serving is not None:
                server.should_exit = True
                serving.join(timeout=60)  # flows finish logging to Prefect before it stops
            stack.stop()
        return self.report

    def _run_steps(self, db: Database, api: httpx.Client, settings: Settings) -> None:
        user = accounts.create_user(db, f"demo-{uuid.uuid4().hex[:8]}@example.test")
        project = accounts.create_project(db, "Velocity demo", user, template="static")
        api.headers["Authorization"] = f"Bearer {mint_user_token(user, 3600, settings)}"

        with self.console.status("starting a preview session (provision-session flow)"):
            started = time.perf_counter()
            response = api.post("/sessions/start", json={"projectId": str(project)})
            _expect(response.status_code == 202, f"start returned {response.status_code}: "
                    f"{response.text}")
            session = response.json()
            self.report.flow_run_id = session.get("flowRunId")
            status = _wait(lambda: _active(api, session["statusUrl"]), ACTIVE_TIMEOUT,
                           "the session to be active")
            self.report.session_start_seconds = time.perf_counter() - started
        self.report.snapshot_seconds = _snapshot_task_seconds(self.report.flow_run_id)
        project_dir = settings.home.resolve() / "runtimes" / "process" / status["containerId"] \
            / "project"

        for n in range(EDITS):
            self.console.print(f"edit {n + 1}/{EDITS}", end="\r")
            content = f"<!doctype html>\n<title>Velocity demo</title>\n<h1>edit {n + 1}</h1>\n"
            self._rpc(api, "upsert_project_file", project_uuid=str(project),
                      p_file_path="index.html", p_content=content)
            sent = time.perf_counter()
            _wait(lambda c=content: _reads(project_dir / "index.html", c), DISK_TIMEOUT,
                  f"edit {n + 1} on the agent's disk", interval=0.0002)
            self.report.edit_ms.append((time.perf_counter() - sent) * 1000)
        self.report.edits = EDITS

        with self.console.status("a delete and a bulk change"):
            self._rpc(api, "delete_project_file", project_uuid=str(project),
                      p_file_path="style.css")
            self._rpc(api, "bulk_upsert_project_files", project_uuid=str(project), files=[
                {"file_path": "main.js", "action": "delete"},
                {"file_path": "js/app.js", "content": "console.log('renamed');\n"},
                {"file_path": "about.html", "content": "<p>about</p>\n"}])
            expected = {f["file_path"]: f["content"] for f in
                        self._rpc(api, "list_current_files", project_uuid=str(project))}
            _wait(lambda: _tree(project_dir) == expected, DISK_TIMEOUT,
                  "the agent's files to equal the database's")
            self.report.files_verified = len(expected)

        with self.console.status("stopping the session (stop-session flow)"):
            response = api.post("/sessions/stop", json={"sessionId": session["sessionId"]})
            _expect(response.status_code == 200, f"stop returned {response.status_code}")
            _wait(lambda: api.get(session["statusUrl"]).json()["status"] == "ended", 60,
                  "the session to end")
        self.report.status = "ok"

    def _rpc(self, api: httpx.Client, function: str, **arguments: Any) -> Any:
        response = api.post(f"/rest/v1/rpc/{function}", json=arguments)
        _expect(response.status_code == 200, f"{function} returned {response.status_code}: "
                f"{response.text}")
        return response.json()


def _active(api: httpx.Client, status_url: str) -> dict[str, Any] | None:
    status = api.get(status_url).json()
    if status["status"] == "error":
        raise DemoFailed(f"the session failed: {status['error']}")
    return status if status["status"] == "active" else None


def _snapshot_task_seconds(flow_run_id: str | None) -> float | None:
    """How long the provision flow's build-snapshot task ran, as Prefect recorded it."""
    if flow_run_id is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        # sort and limit must be explicit: Prefect 3.8's client sends nulls the server refuses
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
    seconds = [run.total_run_time.total_seconds() for run in runs
               if run.task_key and "snapshot" in run.name]
    return sum(seconds) if seconds else None


def _reads(path: Path, content: str) -> bool:
    try:
        return path.read_text() == content
    except OSError:
        return False


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*")
            if p.is_file()}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def _wait(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # polling a condition, with a deadline


def run_demo(console: Console) -> DemoReport:
    port = free_port()
    return Demo(console, settings_for_address("127.0.0.1", port), port).run()


def print_report(console: Console, report: DemoReport) -> None:
    table = Table(title=f"velocity demo: {report.status}")
    table.add_column("step")
    table.add_column("figure", justify="right")
    table.add_row("session start (API call -> active)", f"{report.session_start_seconds:.2f} s")
    if report.snapshot_seconds is not None:
        table.add_row("snapshot (build-snapshot task)", f"{report.snapshot_seconds:.3f} s")
    for name, value in report.percentiles().items():
        table.add_row(f"edit -> agent disk {name}", f"{value:.2f} ms")
    table.add_row("edits", str(report.edits))
    table.add_row("files verified on disk", str(report.files_verified))
    if report.flow_run_id:
        table.add_row("provision flow run", report.flow_run_id)
    console.print(table)
    if report.error:
        console.print(f"[red]{report.error}[/red]")
