"""What the benchmarks share: a database to measure on, a quiet machine, percentiles, and JSON
output."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from velocity.cluster import LocalCluster
from velocity.db import SQL_DIR, Database, migrate


@contextmanager
def private_server() -> Iterator[str]:
    """A private durable cluster (the same settings as `velocity db start`, fsync on) for as
    long as the block runs; yields its maintenance database's URL."""
    root = Path(tempfile.mkdtemp(prefix="velocity-bench-pg-"))
    os.chmod(root, 0o755)
    cluster = LocalCluster(root)
    try:
        cluster.start()
        yield cluster.url("postgres")
    finally:
        cluster.destroy()


@contextmanager
def scratch_database(server_url: str | None = None, migrations: Path = SQL_DIR,
                     name: str | None = None) -> Iterator[str]:
    """A fresh database migrated from `migrations`: on `server_url`, or on a private server
    that is destroyed afterwards."""
    if server_url is None:
        with private_server() as private_url, \
                scratch_database(private_url, migrations, name) as url:
            yield url
        return
    name = name or f"bench_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    migrate(url, migrations)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settle(db: Database) -> None:
    """Start a figure from a settled state: what earlier writes dirtied flushed by a checkpoint
    (a superuser's; skipped for others), else the checkpointer writes it back during the
    figure, and the machine quiet (autovacuum and the like done)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege), db.transaction() as conn:
        conn.execute("CHECKPOINT")
    wait_until_quiet()


def wait_until_quiet(busy_cores: float = 0.3, window: float = 1.0,
                     timeout: float = 120.0) -> float:
    """Wait until the machine's CPUs were busy less than `busy_cores` over `window` seconds
    (from /proc/stat; time stolen by the hypervisor is not busy); returns the seconds waited.
    After `timeout` it returns anyway: the figures then say how long it waited."""
    started = time.monotonic()
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    before = _busy_ticks()
    while time.monotonic() - started < timeout:
        time.sleep(window)  # the window measured
        after = _busy_ticks()
        if (after - before) / ticks_per_second / window < busy_cores:
            break
        before = after
    return time.monotonic() - started


def _busy_ticks() -> int:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq


def host_yardstick_ms(repeats: int = 5) -> float:
    """Milliseconds a fixed pure-Python loop takes (median of `repeats`): how quick the shared
    host is right now. Printed beside figures that move with the host, it tells a slow hour
    from a slow change; on the 2-core machine here it ranges from about 140 to 250 ms."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for number in range(3_000_000):
            total += number
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def percentiles(samples: Sequence[float], cuts: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    if len(samples) < 2:
        value = samples[0] if samples else 0.0
        return {f"p{cut}": round(value, 3) for cut in cuts}
    quantiles = statistics.quantiles(samples, n=100, method="inclusive")
    return {f"p{cut}": round(quantiles[cut - 1], 3) for cut in cuts}


def emit(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
