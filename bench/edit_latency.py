"""Edit → disk latency: from an RPC commit to the file's new bytes on an agent's disk.

The gateway runs as a real `velocity serve` subprocess; agents run through the process
runtime, each with its own project. One writer edits every project at a steady rate through
`upsert_project_file` (as the service); inotify sees each agent's atomic rename the moment
it lands; the watcher runs as a real-time process where allowed (as root), so its own wait
for a CPU is not counted. The clock starts when the RPC returns (the commit has happened)
and stops at the rename; an edit that landed before its RPC returned (the writer waited for
a CPU while the edit travelled) counts as 0 ms. Measuring starts once every agent is ready
and the machine is quiet again: starting a hundred agents back to back keeps both cores busy
for a while, and edits timed then would time that start-up. Phases: 1, 10 and 100 sessions
at 2 edits/s each, then the same edit stream against projects of 10 and of 10,000 files (the
cost per edit must not depend on project size).

    python -m bench.edit_latency --json [--sessions 1,10,100] [--rate 2] [--seconds 20]
                                 [--files 10] [--size-check 10,10000]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import emit, percentiles, scratch_database, wait_until_quiet
from bench.gateway_capacity import free_port, rss_mib
from bench.inotify import Watcher

EDITED_FILE = "src/App.tsx"


class Edit(NamedTuple):
    directory: int  # the index of the edited project's directory
    sent: float  # monotonic time the RPC was sent
    returned: float  # ... and returned: the commit has happened


class Matched(NamedTuple):
    samples: list[tuple[float, float]]  # (when the RPC returned, latency ms) per landed edit
    not_landed: int  # edits with no landing seen at all
    before_return: int  # edits that landed before their RPC returned (counted as 0 ms)


def match_landings(edits: list[Edit], landings: list[tuple[int, float]]) -> Matched:
    """Pairs the k-th edit of a file with the k-th rename of it seen after the edit was sent.

    An agent applies a file's events in order and writes each once, so edits and renames pair
    one to one however late a landing is: a slow one counts at its full latency.
    """
    by_directory: dict[int, list[float]] = {}
    for directory, at in sorted(landings, key=lambda landing: landing[1]):
        by_directory.setdefault(directory, []).append(at)
    next_landing: dict[int, int] = {}
    samples: list[tuple[float, float]] = []
    not_landed = before_return = 0
    for edit in edits:
        seen = by_directory.get(edit.directory, [])
        index = next_landing.get(edit.directory, 0)
        while index < len(seen) and seen[index] < edit.sent:
            index += 1
        if index == len(seen):
            not_landed += 1
            continue
        next_landing[edit.directory] = index + 1
        before_return += seen[index] < edit.returned
        samples.append((edit.returned, max(0.0, seen[index] - edit.returned) * 1000))
    return Matched(samples, not_landed, before_return)


class Phase:
    """Agents for a number of projects, and the edit stream that measures them."""

    def __init__(self, stack: dict[str, Any], sessions: int, files: int) -> None:
        from velocity.db import Actor
        from velocity.files import FileClient

        self.stack = stack
        db = stack["db"]
        self.files = FileClient(db, Actor.service())
        self.previews: list[Any] = []
        try:
            self._start_all(db, sessions, files)
        except BaseException:
            self.stop()  # a failed start must not leave a hundred agents behind
            raise

    def _start_all(self, db: Any, sessions: int, files: int) -> None:
        from velocity import accounts

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
        self.settled_seconds = wait_until_quiet()

    def _start(self, project_id: uuid.UUID, owner: uuid.UUID) -> Any:
        from tests.preview import start_preview

        stack = self.stack
        return start_preview(stack["db"], stack["store"], stack["settings"], stack["runtime"],
                             stack["runtime_root"], project_id, owner)

    def _wait_ready(self, preview: Any, deadline: float) -> None:
        """Until the agent has joined its channel: an edit sent before would be timed
        through the agent's catch-up, not the live path."""
        from tests.preview import wait_until_ready

        try:
            wait_until_ready(self.stack["db"], preview, self.stack["runtime"],
                             timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as error:
            raise RuntimeError(f"an agent did not become ready: {error}\n"
                               + self.stack["runtime"].logs(preview.container.container_id,
                                                            tail=40)) from None

    def measure(self, rate: float, seconds: float) -> dict[str, Any]:
        directories = [(p.project_dir / EDITED_FILE).parent for p in self.previews]
        watcher = WatcherProcess(directories, Path(EDITED_FILE).name)
        edits: list[Edit] = []
        pace = Pace(1.0 / (rate * len(self.previews)))
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            edits.append(self.edit(len(edits)))
            pace.wait()
        landings = watcher.stop(settle_seconds=3)
        return {**_summary(match_landings(edits, landings), len(edits), started, seconds),
                "settled_before_s": round(self.settled_seconds, 1),
                "final_state_mismatches": self._final_state_mismatches()}

    def edit(self, number: int) -> Edit:
        """Edit number `number` of the stream, round robin over the projects."""
        index = number % len(self.previews)
        sent = time.monotonic()
        self.files.upsert(self.previews[index].project_id, EDITED_FILE,
                          f"edit {number} {uuid.uuid4()}")
        return Edit(index, sent, time.monotonic())

    def _final_state_mismatches(self) -> int:
        """Agents whose file differs from the database's current content: lost events."""
        mismatches = 0
        for preview in self.previews:
            current = {f.file_path: f.content for f in self.files.list_current(preview.project_id)}
            on_disk = (preview.project_dir / EDITED_FILE).read_text()
            mismatches += on_disk != current[EDITED_FILE]
        return mismatches

    def stop(self) -> None:
        for preview in self.previews:
            self.stack["runtime"].stop(preview.container.container_id, timeout=5, remove=True)


class Pace:
    """A steady rate: each wait() returns one interval after the previous one was due."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next_at = time.monotonic()

    def wait(self) -> None:
        self._next_at += self.interval
        delay = self._next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the edit stream


class WatcherProcess:
    """inotify in its own process, so no thread of ours delays a timestamp (one GIL each)."""

    def __init__(self, directories: list[Path], name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._parent, child = context.Pipe()
        self._process = context.Process(target=_watch, args=(directories, name, child),
                                        daemon=True)
        self._process.start()
        self._parent.recv()  # the watches are in place

    def stop(self, settle_seconds: float) -> list[tuple[int, float]]:
        time.sleep(settle_seconds)  # let the last edits land before collecting
        self._parent.send("stop")
        landings: list[tuple[int, float]] = self._parent.recv()
        self._process.join(timeout=10)
        return landings


def _watch(directories: list[Path], name: str, pipe: Any) -> None:
    _schedule_first()
    index = {directory: n for n, directory in enumerate(directories)}
    landings: list[tuple[int, float]] = []
    watcher = Watcher(lambda directory, filename, at: landings.append((index[directory], at))
                      if filename == name else None)
    for directory in directories:
        watcher.watch(directory)
    pipe.send("ready")
    watcher.run_until(pipe.poll)
    pipe.send(landings)


def _schedule_first() -> None:
    """Run this process (the instrument) ahead of the system measured, where allowed.

    inotify events carry no time: a landing is stamped when this process reads it. On two
    cores busy with a hundred agents, the watcher itself waited for a CPU after a rename,
    and its wait was counted as the edit's. As a real-time process it runs the moment the
    event arrives; it reads, stamps and sleeps again, taking almost no time from the rest.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError):  # not Linux, or not allowed
        with contextlib.suppress(OSError):
            os.nice(-10)


def _summary(matched: Matched, edits: int, started: float, seconds: float) -> dict[str, Any]:
    latencies = [latency for _, latency in matched.samples]
    thirds = [[lat for at, lat in matched.samples
               if k * seconds / 3 <= at - started < (k + 1) * seconds / 3] for k in range(3)]
    return {"edits": edits, "landed": len(matched.samples),
            # final_state_mismatches says whether an edit that never landed was lost.
            "not_landed": matched.not_landed,
            "landed_before_rpc_returned": matched.before_return,
            "latency_ms": percentiles(latencies),
            "latency_ms_by_third": [percentiles(t) for t in thirds if t]}


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
        shutil.rmtree(home, ignore_errors=True)  # kept when the run fails: its logs tell why
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
