"""How much one gateway process holds: subscribers, RSS, fan-out messages/s, delivery p99.

The gateway runs as a real `velocity serve` subprocess (so its RSS is its own). Client worker
processes open the websocket connections (Phoenix vsn 1.0.0, user tokens), spread evenly
over the projects; then project files are written at a steady rate and every delivered
frame is counted and timed (write time is carried in the file content; one clock).

    python -m bench.gateway_capacity --json [--connections 10000] [--projects 100]
                                     [--rate 250] [--seconds 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import emit, percentiles, scratch_database


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


CONTENT_MARK = '"content":"'


# -- client worker process ----------------------------------------------------------------------

async def _hold_connections(url: str, joins: list[tuple[str, str]], ready: Any, go: Any,
                            results: Any, seconds: float) -> None:
    import websockets

    latencies: list[float] = []
    received = 0
    sockets = []

    async def open_one(topic: str, token: str) -> Any:
        websocket = await websockets.connect(f"{url}?vsn=1.0.0", max_size=None, compression=None,
                                             open_timeout=60, ping_interval=None)
        await websocket.send(json.dumps({"topic": topic, "event": "phx_join", "ref": "1",
                                         "join_ref": "1", "payload": {"access_token": token,
                                                                      "config": {}}}))
        reply = json.loads(await websocket.recv())
        if reply["payload"]["status"] != "ok":
            raise RuntimeError(f"join refused: {reply}")
        return websocket

    batch = 200
    for start in range(0, len(joins), batch):
        sockets += await asyncio.gather(*(open_one(t, k) for t, k in joins[start:start + batch]))
    ready.put(len(sockets))
    await asyncio.get_running_loop().run_in_executor(None, go.wait)

    async def read(websocket: Any) -> None:
        nonlocal received
        async for raw in websocket:
            now = time.time()
            # Find the write time without parsing the frame: a client's JSON parsing would
            # otherwise compete with the gateway for the same two cores.
            start = raw.find(CONTENT_MARK)
            if start < 0:
                continue
            start += len(CONTENT_MARK)
            sent = float(raw[start:raw.index('"', start)])
            latencies.append((now - sent) * 1000)
            received += 1

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    await asyncio.sleep(seconds + 3)  # the measured window plus draining time
    for task in readers:
        task.cancel()
    results.put({"received": received, "latencies": latencies})
    for websocket in sockets:
        await websocket.close()


def client_worker(url: str, joins: list[tuple[str, str]], ready: Any, go: Any, results: Any,
                  seconds: float) -> None:
    asyncio.run(_hold_connections(url, joins, ready, go, results, seconds))


# -- the run ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--rate", type=float, default=250.0, help="file writes per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (CREATEDB needed)")
    args = parser.parse_args()

    from pydantic import SecretStr

    from velocity import accounts
    from velocity.db import Actor, Database
    from velocity.files import FileClient
    from velocity.settings import Settings
    from velocity.tokens import mint_user_token

    secret = uuid.uuid4().hex
    with scratch_database(args.database_url) as url, Database(url, max_size=4) as db:
        home = Path(tempfile.mkdtemp(prefix="velocity-bench-gw-"))
        settings = Settings(home=home, database_url=url, jwt_secret=SecretStr(secret))
        projects = []
        for n in range(args.projects):
            owner = accounts.create_user(db, f"gw{n}-{uuid.uuid4().hex[:6]}@example.test")
            projects.append((accounts.create_project(db, f"gw {n}", owner), owner))
        joins = [(f"realtime:project:{projects[i % len(projects)][0]}",
                  mint_user_token(projects[i % len(projects)][1], 3600, settings))
                 for i in range(args.connections)]

        port = free_port()
        env = {**os.environ, "VELOCITY_DATABASE_URL": url, "VELOCITY_HOME": str(home),
               "VELOCITY_JWT_SECRET": secret, "VELOCITY_REALTIME_SEND_QUEUE": "10000"}
        log = (home / "gateway.log").open("w")  # a pipe nobody reads would block the server
        gateway = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", "--port",
                                    str(port)], env=env, stdout=log, stderr=log, text=True)
        try:
            _wait_for_port(port, gateway)
            rss_idle = rss_mib(gateway.pid)
            context = multiprocessing.get_context("spawn")
            ready, results, go = context.Queue(), context.Queue(), context.Event()
            ws_url = f"ws://127.0.0.1:{port}/realtime/v1/websocket"
            shares = [joins[w::args.workers] for w in range(args.workers)]
            workers = [context.Process(target=client_worker,
                                       args=(ws_url, share, ready, go, results, args.seconds))
                       for share in shares]
            connect_started = time.perf_counter()
            for worker in workers:
                worker.start()
            connected = sum(ready.get(timeout=600) for _ in workers)
            connect_seconds = time.perf_counter() - connect_started
            rss_connected = rss_mib(gateway.pid)

            go.set()
            files = FileClient(db, Actor.service())
            writes = 0
            started = time.perf_counter()
            while (elapsed := time.perf_counter() - started) < args.seconds:
                if writes < elapsed * args.rate:
                    project_id, _ = projects[writes % len(projects)]
                    files.upsert(project_id, "bench.txt", repr(time.time()))
                    writes += 1
                else:
                    time.sleep(0.0005)  # pacing the writer, not synchronising
            write_seconds = time.perf_counter() - started
            rss_loaded = rss_mib(gateway.pid)
            outcome = [results.get(timeout=120) for _ in workers]
            for worker in workers:
                worker.join(timeout=60)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)  # kept when the run fails: its logs tell why

    received = sum(o["received"] for o in outcome)
    latencies = [value for o in outcome for value in o["latencies"]]
    expected = writes * (args.connections // args.projects)
    figures = {
        "connections": connected, "projects": args.projects,
        "subscribers_per_project": args.connections // args.projects,
        "connect_seconds": round(connect_seconds, 2),
        "gateway_rss_mib": {"idle": rss_idle, "connected": rss_connected, "loaded": rss_loaded},
        "writes": writes, "write_rate_per_second": round(writes / write_seconds, 1),
        "messages_delivered": received, "messages_expected": expected,
        "fanout_messages_per_second": round(received / write_seconds, 1),
        "delivery_latency_ms": percentiles(latencies),
        "goals": {"connections_10000_under_1_gib": connected >= 10_000 and rss_loaded < 1024,
                  "fanout_20000_per_second": received / write_seconds >= 20_000},
    }
    emit(figures, args.json)


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}; see its log")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling a port with a deadline
    raise RuntimeError("the gateway did not start listening")


if __name__ == "__main__":
    main()
