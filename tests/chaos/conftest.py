"""The chaos suite's stack (its own PostgreSQL, service process and proxy) and its seeds.

Cases: by default the short version runs `short-1` to `short-3` (two projects, three agents,
every fault kind once over 100 edits). VELOCITY_CHAOS_SEEDS=N runs the long version, seeds
1..N (three projects, four agents, 150 edits, every fault kind plus up to three more).
VELOCITY_CHAOS_SEED=7,short-2 reruns exactly those cases. VELOCITY_CHAOS_REPORT=path writes
what ran as JSON; the terminal summary always says how many seeds ran and passed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from velocity.db import Database, migrate
from velocity.runtimes import ProcessRuntime
from velocity.settings import Settings
from velocity.storage import open_store

from ..servers import free_port
from .harness import ChaosStack
from .proxy import ChaosProxy
from .services import ChaosPostgres, ServiceProcess

SHORT_RUN = ["short-1", "short-2", "short-3"]
RESULTS = pytest.StashKey[list[dict[str, Any]]]()


def chaos_cases() -> list[str]:
    explicit = os.environ.get("VELOCITY_CHAOS_SEED", "").strip()
    if explicit:
        return [case.strip() for case in explicit.split(",") if case.strip()]
    count = os.environ.get("VELOCITY_CHAOS_SEEDS", "").strip()
    if count:
        return [str(seed) for seed in range(1, int(count) + 1)]
    return SHORT_RUN


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS, [])
    if not results:
        return
    passed = [r["case"] for r in results if r["passed"]]
    failed = [r["case"] for r in results if not r["passed"]]
    terminalreporter.write_line(
        f"chaos: {len(results)} seeds ran, {len(passed)} passed"
        + (f"; failing seeds: {failed}" if failed else ""))
    report = os.environ.get("VELOCITY_CHAOS_REPORT")
    if report:
        Path(report).write_text(json.dumps(results, indent=2, default=str))


@pytest.fixture
def chaos_record(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    record: dict[str, Any] = {"passed": False}
    yield record
    if "case" in record:
        request.config.stash[RESULTS].append(record)


@pytest.fixture(scope="module")
def chaos_stack() -> Iterator[ChaosStack]:
    """Everything the chaos test may kill, private to it (never the shared test cluster)."""
    root = Path(tempfile.mkdtemp(prefix="velocity-chaos-"))
    os.chmod(root, 0o755)  # as root, the postgres user must reach the cluster directory
    postgres = ChaosPostgres(root / "pg")
    postgres.start()
    url = postgres.url("velocity")
    migrate(url)
    service_port = free_port()
    proxy = ChaosProxy(service_port).start()
    home = root / "home"
    settings = Settings(home=home, database_url=url, storage=f"local://{home / 'store'}",
                        public_url=proxy.url)
    service = ServiceProcess(settings, service_port, root / "service.log")
    db = Database(url, max_size=12)
    db.pool.timeout = 5.0  # a writer waits this long for a connection while PostgreSQL is down
    runtime_root = root / "runtimes"
    stack = ChaosStack(postgres, service, proxy, settings, db, open_store(settings),
                       ProcessRuntime(runtime_root), runtime_root)
    try:
        service.start()
        yield stack
    finally:
        for container in stack.runtime.list():
            stack.runtime.stop(container.container_id, timeout=5)
        service.stop()
        proxy.stop()
        db.close()
        postgres.destroy()
        shutil.rmtree(root, ignore_errors=True)
