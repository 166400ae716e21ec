"""`velocity demo`: the main job end to end on embedded defaults, with timings.

Today it exercises the database contract as a user would through the RPCs: a demo user and
project, a generated site in one bulk write, 50 edits, a delete, and a check that the
project's current files and event log say exactly what was written.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from velocity import accounts
from velocity.db import Actor, Database, database_url, embedded_cluster, migrate
from velocity.files import FileClient
from velocity.settings import get_settings

STATIC_SITE = {
    "index.html": "<!doctype html>\n<title>Velocity demo</title>\n<h1>Hello</h1>\n"
                  "<script src=\"main.js\"></script>\n",
    "main.js": "document.querySelector('h1').textContent += ' from Velocity';\n",
    "style.css": "body { font-family: sans-serif; }\n",
    "README.md": "# Demo project\n",
}


@dataclass
class DemoReport:
    status: str = "running"
    edits: int = 0
    files_verified: int = 0
    events: int = 0
    bulk_seconds: float = 0.0
    edit_ms: list[float] = field(default_factory=list)

    def percentiles(self) -> dict[str, float]:
        if not self.edit_ms:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        cuts = statistics.quantiles(self.edit_ms, n=100, method="inclusive")
        return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3), "p99": round(cuts[98], 3)}

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "edits": self.edits, "files_verified": self.files_verified,
                "events": self.events, "bulk_seconds": round(self.bulk_seconds, 4),
                "edit_latency_ms": self.percentiles()}


def run_demo(console: Console, edits: int = 50) -> DemoReport:
    settings = get_settings()
    report = DemoReport()
    with console.status("starting the embedded database") as status:
        if not settings.database_url:
            embedded_cluster(settings).start()
        url = database_url(settings)
        status.update("applying migrations")
        migrate(url)
        with Database(url, max_size=2) as db:
            status.update("creating the demo user and project")
            user = accounts.create_user(db, f"demo-{uuid.uuid4().hex[:8]}@example.test")
            project = accounts.create_project(db, "Velocity demo", user, template="static")
            files = FileClient(db, Actor.user(user))

            status.update("generating the project in one bulk write")
            started = time.perf_counter()
            files.bulk_upsert(project, [{"file_path": p, "content": c}
                                        for p, c in STATIC_SITE.items()])
            report.bulk_seconds = time.perf_counter() - started
            expected = dict(STATIC_SITE)

            version = 1
            for n in range(edits):
                status.update(f"edit {n + 1} of {edits}")
                content = STATIC_SITE["index.html"].replace("Hello", f"Hello #{n + 1}")
                started = time.perf_counter()
                row = files.upsert(project, "index.html", content, expected_version=version)
                report.edit_ms.append((time.perf_counter() - started) * 1000)
                version = row.version
                expected["index.html"] = content
            report.edits = edits

            status.update("deleting a file and verifying")
            files.delete(project, "style.css")
            del expected["style.css"]
            current = {f.file_path: f.content for f in files.list_current(project)}
            report.files_verified = sum(current.get(p) == c for p, c in expected.items())
            report.events = len(files.events_since(project, 0, max_rows=10000))
            ok = current == expected and report.events == edits + 2
            report.status = "ok" if ok else "mismatch"
    return report


def print_report(console: Console, report: DemoReport) -> None:
    table = Table(title=f"velocity demo: {report.status}")
    table.add_column("step")
    table.add_column("figure", justify="right")
    table.add_row("bulk generation (4 files)", f"{report.bulk_seconds * 1000:.1f} ms")
    for name, value in report.percentiles().items():
        table.add_row(f"edit RPC round trip {name}", f"{value:.2f} ms")
    table.add_row("edits", str(report.edits))
    table.add_row("files verified", str(report.files_verified))
    table.add_row("events in the log", str(report.events))
    console.print(table)
