"""Edit → disk latency: from an RPC commit to the file's new bytes on an agent's disk.

The gateway runs as a real `velocity serve` subprocess; agents run through the process
runtime, each with its own project. One writer edits every project at a steady rate through
`upsert_project_file` (as the service); inotify sees each agent's atomic rename the moment it
lands. The clock starts when the RPC returns (the commit has happened) and stops at the
rename. Phases: 1, 10 and 100 sessions at 2 edits/s each, then the same edit stream against
projects of 10 and of 10,000 files (the cost per edit must not depend on project size).

    python -m bench.edit_latency --json [--sessions 1,10,100] [--rate 2] [--seconds 20]
                                 [--files 10] [--size-check 10,10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import emit, percentiles, scratch_database
from bench.gateway_capacity import free_port, rss_mib
from bench.inotify import Watcher

EDITED_FILE = "src/App.tsx"


class Phase:
    """Agents for a number of projects, and the edit stream that measures them."""

    def __init__(self, stack: dict[str, Any], sessions: int, files: int) -> None:
        from velocity import accounts
        from velocity.db import Actor
        from velocity.files import FileClient

        self.stack = stack
        db = stack["db"]
        self.files = FileClient(db, Actor.service())
        self.previews = []
        for n in range(sessions):
            owner = accounts.create_user(db, f"lat{n}-{uuid.uuid4().hex[:6]}@example.test")
            project = accounts.create_project(db, f"latency {n}", owner)
            self.files.bulk_upsert(project, [{"file_path": EDITED_FILE, "content": "start"}])
            for start in range(1, files, 5000):
                self.files.bulk_upsert(project, [
                    {"file_path": f"src/module{i // 100}/file{i}.ts",
                     "content": f"export const value{i} = {i};\n"}
                    for i in range(start, min(files, start + 5000))])
            self.previews.append(self._start(project, owner))
        deadline = time.monotonic() + 120 + sessions
        for preview in self.previews:
            self._wait_ready(preview, deadline)

    def _start(self, project_id: uuid.UUID, owner: uuid.UUID) -> Any:
        from tests.preview import start_preview

        stack = self.stack
        return start_preview(stack["db"], stack["store"], stack["settings"], stack["runtime"],
                             stack["runtime_root"], project_id, owner)

    def _wait_ready(self, preview: Any, deadline: float) -> None:
        target = preview.project_dir / EDITED_FILE
        while not target.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not hydrate in time:\n"
                                   + self.stack["runtime"].logs(preview.container.container_id,
                                                                tail=40))
            time.sleep(0.05)  # polling for hydration, with a deadline

    def measure(self, rate: float, seconds: float) -> dict[str, Any]:
        pending: dict[Path, float] = {}
        samples: list[tuple[float, float]] = []  # (seconds into the phase, latency ms)
        lock = threading.Lock()
        by_directory = {(p.project_dir / EDITED_FILE).parent: p for p in self.previews}
        name = Path(EDITED_FILE).name
        started = time.monotonic()

        def landed(directory: Path, filename: str, at: float) -> None:
            if filename != name:
                return
            with lock:
                sent = pending.pop(directory, None)
            if sent is not None:
                samples.append((sent - started, (at - sent) * 1000))

        watcher = Watcher(landed)
        for directory in by_directory:
            watcher.watch(directory)
        done = threading.Event()
        thread = threading.Thread(target=watcher.run_until, args=(done.is_set,), daemon=True)
        thread.start()

        interval = 1.0 / (rate * len(self.previews))
        edits = 0
        lost = 0
        next_at = time.monotonic()
        while time.monotonic() - started < seconds:
            preview = self.previews[edits % len(self.previews)]
            directory = (preview.project_dir / EDITED_FILE).parent
            with lock:
                if directory in pending:
                    lost += 1  # the previous edit of this project has not landed yet
            self.files.upsert(preview.project_id, EDITED_FILE, f"edit {edits} {uuid.uuid4()}")
            with lock:
                pending[directory] = time.monotonic()
            edits += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the edit stream
        drain_until = time.monotonic() + 5
        while pending and time.monotonic() < drain_until:
            time.sleep(0.01)  # letting the last edits land, with a deadline
        done.set()
        thread.join(timeout=5)
        watcher.close()
        latencies = [latency for _, latency in samples]
        thirds = [[lat for at, lat in samples if k * seconds / 3 <= at < (k + 1) * seconds / 3]
                  for k in range(3)]
        return {"edits": edits, "landed": len(samples), "not_landed": len(pending) + lost,
                "latency_ms": percentiles(latencies),
                "latency_ms_by_third": [percentiles(t) for t in thirds if t]}

    def stop(self) -> None:
        for preview in self.previews:
            self.stack["runtime"].stop(preview.container.container_id, timeout=5, remove=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sessions", default="1,10,100", help="comma-separated phase sizes")
    parser.add_argument("--rate", type=float, default=2.0, help="edits per second per session")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--files", type=int, default=10, help="files per project")
    parser.add_argument("--size-check", default="10,10000",
                        help="project sizes compared at 10 sessions ('' to skip)")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (CREATEDB needed)")
    args = parser.parse_args()

    from velocity.db import Database
    from velocity.runtimes import ProcessRuntime
    from velocity.settings import Settings
    from velocity.storage import open_store

    figures: dict[str, Any] = {"rate_per_session": args.rate, "seconds": args.seconds,
                               "phases": {}, "project_size": {}}
    with scratch_database(args.database_url) as url, Database(url, max_size=4) as db:
        home = Path(tempfile.mkdtemp(prefix="velocity-bench-lat-"))
        os.chmod(home, 0o755)
        port = free_port()
        settings = Settings(home=home, database_url=url, public_url=f"http://127.0.0.1:{port}")
        settings.generated_secrets  # noqa: B018 - write secrets.json before the gateway reads it
        env = {**os.environ, "VELOCITY_DATABASE_URL": url, "VELOCITY_HOME": str(home),
               "VELOCITY_PUBLIC_URL": settings.public_url}
        log = (home / "gateway.log").open("w")
        gateway = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", "--port",
                                    str(port)], env=env, stdout=log, stderr=log)
        runtime_root = home / "runtimes"
        stack = {"db": db, "settings": settings, "store": open_store(settings),
                 "runtime": ProcessRuntime(runtime_root), "runtime_root": runtime_root}
        try:
            _wait_for_gateway(port, gateway)
            for sessions in [int(s) for s in args.sessions.split(",") if s]:
                phase = Phase(stack, sessions, args.files)
                try:
                    figures["phases"][f"{sessions}_sessions"] = {
                        **phase.measure(args.rate, args.seconds),
                        "gateway_rss_mib": rss_mib(gateway.pid)}
                finally:
                    phase.stop()
            for files in [int(s) for s in args.size_check.split(",") if s]:
                phase = Phase(stack, 10, files)
                try:
                    figures["project_size"][f"{files}_files"] = phase.measure(args.rate,
                                                                              args.seconds)
                finally:
                    phase.stop()
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    emit(figures, args.json)


def _wait_for_gateway(port: int, process: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling for the gateway, with a deadline
    raise RuntimeError("the gateway did not start")


if __name__ == "__main__":
    main()
