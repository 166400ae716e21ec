"""Runs a chaos plan against real services and checks what the system promises.

The stack: a private PostgreSQL cluster, `velocity serve` as a process, a ChaosProxy in
front of it (agents reach the service only through the proxy), and agents on the process
runtime. A driver thread writes the plan's edits as the projects' users while a steady typist
writes beside it; faults are injected between edits. After quiescence every agent's tree must
equal its project's current files, byte for byte, and every session's applied seq the
project's last seq; every write that was acknowledged must still be in the database.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import psycopg

from velocity import accounts
from velocity.db import Actor, Database
from velocity.errors import RateLimited, VelocityError, VersionConflict
from velocity.files import FileClient
from velocity.runtimes import ProcessRuntime
from velocity.runtimes.process import RECORD_FILE, ProcessRecord
from velocity.settings import Settings
from velocity.storage import ObjectStore

from ..helpers import wait_for
from ..preview import Preview, head_seq, start_preview
from .proxy import ChaosProxy, CutCounts
from .services import ChaosPostgres, ServiceProcess
from .workload import Edit, Fault, Plan

T = TypeVar("T")
TEMP_PREFIX = ".velocity-tmp-"  # the agent's in-flight files (agent/apply.py)
TYPED_PATH = "live/typing.txt"
QUIESCENCE_SECONDS = 90
WRITE_RETRY_SECONDS = 30


@dataclass
class ChaosStack:
    postgres: ChaosPostgres
    service: ServiceProcess
    proxy: ChaosProxy
    settings: Settings
    db: Database
    store: ObjectStore
    runtime: ProcessRuntime
    runtime_root: Path


@dataclass
class Session:
    preview: Preview
    container_id: str

    @property
    def project_dir(self) -> Path:
        return self.preview.project_dir.parent.parent / self.container_id / "project"


@dataclass
class Outcome:
    """What happened, for the report and for diagnosing a failing seed."""

    seed: int
    digest: str
    edits: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    conflicts_won: int = 0
    typed: int = 0
    typist_errors: int = 0
    rate_limited: int = 0  # writes the database asked to wait (53V01), then retried
    samples_checked: int = 0
    websocket_cuts: int = 0
    download_cuts: int = 0
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)  # when each fault began and ended


class ChaosRun:
    def __init__(self, stack: ChaosStack, plan: Plan) -> None:
        self.stack = stack
        self.plan = plan
        self.outcome = Outcome(plan.seed, plan.digest())
        self.projects: list[UUID] = []
        self.owners: list[UUID] = []
        self.editors: list[UUID] = []
        self.sessions: list[Session] = []
        self.acked: set[tuple[UUID, str, int, str | None]] = set()
        self._acked_lock = threading.Lock()
        self._typing = threading.Event()
        self._started = time.monotonic()
        counts = stack.proxy.counts
        self._cuts_expected = CutCounts(counts.websocket_cuts, counts.download_cuts)
        self._cuts_at_start = CutCounts(counts.websocket_cuts, counts.download_cuts)

    # -- set-up --------------------------------------------------------------------------------
    def set_up(self) -> None:
        db = self.stack.db
        tag = f"s{self.plan.seed}-{uuid.uuid4().hex[:6]}"
        for index, files in enumerate(self.plan.initial):
            owner = accounts.create_user(db, f"owner{index}-{tag}@example.test")
            editor = accounts.create_user(db, f"editor{index}-{tag}@example.test")
            project = accounts.create_project(db, f"chaos {tag} {index}", owner,
                                              [(editor, "editor")])
            self._client(owner).bulk_upsert(
                project, [{"file_path": path, "content": content} for path, content in files])
            self.projects.append(project)
            self.owners.append(owner)
            self.editors.append(editor)
        viewers: set[int] = set()
        for project_index in self.plan.sessions:
            # One live session per user and project: a project's second preview is its editor's.
            user = (self.editors if project_index in viewers else self.owners)[project_index]
            viewers.add(project_index)
            preview = start_preview(db, self.stack.store, self.stack.settings,
                                    self.stack.runtime, self.stack.runtime_root,
                                    self.projects[project_index], user)
            self.sessions.append(Session(preview, preview.container.container_id))
        for session in self.sessions:
            wait_for(lambda s=session: _tree(s.project_dir), timeout=60, interval=0.05,
                     message="the agents to hydrate")

    def tear_down(self) -> None:
        for session in self.sessions:
            self.stack.runtime.stop(session.container_id, timeout=5, remove=True)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> Outcome:
        started = self._started = time.monotonic()
        self.stack.proxy.reseed(self.plan.seed)
        begins: dict[int, list[Fault]] = {}
        ends: dict[int, list[Fault]] = {}
        for fault in self.plan.faults:
            begins.setdefault(fault.begin, []).append(fault)
            ends.setdefault(fault.end, []).append(fault)
        typist = threading.Thread(target=self._type, name="chaos-typist")
        self._typing.set()
        typist.start()
        try:
            for index, edit in enumerate(self.plan.edits):
                for fault in begins.get(index, []):
                    self._begin(fault)
                began = time.monotonic()
                self._write(edit)
                if time.monotonic() - began > 1.0:
                    self.outcome.log.append(f"{began - started:.1f}s edit {index}: {edit.kind} "
                                            f"took {time.monotonic() - began:.1f}s")
                for fault in ends.get(index, []):
                    self._end(fault)
                if index % 25 == 0:
                    self.check_nothing_foreign()
                time.sleep(0.01)  # pacing the edit stream, not a synchronisation
            self._wait_for_the_cuts()  # while the typist still makes traffic
            self.outcome.log.append(f"{time.monotonic() - started:.1f}s: every cut happened")
        finally:
            self._typing.clear()
            typist.join(timeout=60)
        counts = self.stack.proxy.counts  # this run's cuts only: the proxy outlives it
        self.outcome.websocket_cuts = counts.websocket_cuts - self._cuts_at_start.websocket_cuts
        self.outcome.download_cuts = counts.download_cuts - self._cuts_at_start.download_cuts
        self.outcome.seconds = round(time.monotonic() - started, 1)
        return self.outcome

    # -- faults --------------------------------------------------------------------------------
    def _begin(self, fault: Fault) -> None:
        self.outcome.faults[fault.kind] += 1
        self.outcome.log.append(f"{time.monotonic() - self._started:.1f}s edit {fault.begin}: "
                                f"{fault.kind} begins")
        if fault.kind == "gateway_kill":
            self.stack.service.kill()
        elif fault.kind == "agent_kill":
            self._kill_agent(self.sessions[fault.session])
        elif fault.kind == "postgres_restart":
            self.stack.postgres.stop(fault.mode)
            time.sleep(fault.downtime)  # the outage itself, not a synchronisation
            self.stack.postgres.start()
            self.stack.db.pool.check()  # drop the pool's connections to the old server
        elif fault.kind == "websocket_cut":
            self._cuts_expected.websocket_cuts += len(self.sessions)
            self.stack.proxy.cut_websockets(len(self.sessions))
        elif fault.kind == "snapshot_cut":
            self._cuts_expected.download_cuts += fault.count
            self.stack.proxy.cut_snapshot_downloads(fault.count)
            session = self.sessions[fault.session]
            self._kill_agent(session)
            self._restart_agent(session)

    def _end(self, fault: Fault) -> None:
        """Restore what the fault took away. Cuts stay armed until they happen: another
        fault (the service down) may keep them from happening before their end."""
        self.outcome.log.append(f"{time.monotonic() - self._started:.1f}s edit {fault.end}: "
                                f"{fault.kind} ends")
        if fault.kind == "gateway_kill":
            self.stack.service.start()
        elif fault.kind == "agent_kill":
            self._restart_agent(self.sessions[fault.session])

    def _wait_for_the_cuts(self) -> None:
        counts, expected = self.stack.proxy.counts, self._cuts_expected
        try:
            wait_for(lambda: counts.websocket_cuts >= expected.websocket_cuts, timeout=60,
                     interval=0.02, message="websockets to be cut mid-frame")
            wait_for(lambda: counts.download_cuts >= expected.download_cuts, timeout=60,
                     interval=0.02, message="snapshot downloads to be cut")
        except AssertionError as error:
            raise AssertionError(f"{error}: {counts} of {expected} expected\n"
                                 + self._agents_report()) from None
        finally:
            self.stack.proxy.disarm()

    def _agents_report(self) -> str:
        """Each agent's state and the end of its log: why a fault did not play out."""
        lines = [f"outcome: {self.outcome}"]
        for session in self.sessions:
            info = self.stack.runtime.status(session.container_id)
            lines.append(f"--- {session.container_id} {info.state} exit={info.exit_code}")
            lines.append(self.stack.runtime.logs(session.container_id, tail=15))
        return "\n".join(lines)

    def _kill_agent(self, session: Session) -> None:
        """SIGKILL the agent's whole process group: no leave, no goodbye."""
        record_path = self.stack.runtime_root / session.container_id / RECORD_FILE
        record = ProcessRecord.model_validate_json(record_path.read_bytes())
        try:
            os.killpg(record.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.stack.runtime.stop(session.container_id, timeout=5)  # reaps, records the exit

    def _restart_agent(self, session: Session) -> None:
        """The same session's agent again, in a new container: hydrate, replay, follow."""
        old = session.container_id
        session.container_id = self.stack.runtime.start(session.preview.spec).container_id
        self.stack.runtime.remove(old)

    # -- writes --------------------------------------------------------------------------------
    def _client(self, user: UUID) -> FileClient:
        return FileClient(self.stack.db, Actor.user(user))

    def _write(self, edit: Edit) -> None:
        project, owner = self.projects[edit.project], self.owners[edit.project]
        files = self._client(owner)
        self.outcome.edits[edit.kind] += 1
        try:
            if edit.kind in ("update", "large"):
                self._ack(project, self._retrying(lambda: files.upsert(project, edit.path,
                                                                       edit.content)))
            elif edit.kind == "delete":
                self._ack(project, self._retrying(lambda: files.delete(project, edit.path)))
            elif edit.kind == "recreate":
                self._ack(project, self._retrying(lambda: files.delete(project, edit.path)))
                self._ack(project, self._retrying(lambda: files.upsert(project, edit.path,
                                                                       edit.content)))
            elif edit.kind in ("bulk", "rename", "dir_swap"):
                items = [{"file_path": path, "action": "delete"} if content is None
                         else {"file_path": path, "content": content}
                         for path, content in edit.items]
                result = self._retrying(lambda: files.bulk_upsert(project, items))
                with self._acked_lock:
                    self.acked.update((project, item.file_path, item.version, None)
                                      for item in result.files)
            elif edit.kind == "binary":  # only the service may point a file at storage
                self._write_binary(FileClient(self.stack.db, Actor.service()), project, edit)
            elif edit.kind == "conflict":
                self._race(project, edit)
        except VelocityError as error:
            self.outcome.refused[f"{edit.kind}: {type(error).__name__}"] += 1

    def _write_binary(self, files: FileClient, project: UUID, edit: Edit) -> None:
        digest = hashlib.sha256(edit.data).hexdigest()
        key = f"project-files/{project}/{digest}"
        self.stack.store.put_bytes(key, edit.data)
        self._ack(project, self._retrying(
            lambda: files.upsert_binary(project, edit.path, key, digest, len(edit.data))))

    def _race(self, project: UUID, edit: Edit) -> None:
        """Owner and editor write one path from the same version: exactly one may win."""
        current = {f.file_path: f.version for f in
                   self._retrying(lambda: self._client(self.owners[edit.project])
                                  .list_current(project))}
        version = current.get(edit.path)
        if version is None:
            self.outcome.refused["conflict: path gone"] += 1
            return
        writers = [(self.owners[edit.project], edit.content),
                   (self.editors[edit.project], edit.other)]
        barrier = threading.Barrier(len(writers))
        results: list[object] = []

        def contend(user: UUID, content: str) -> None:
            client = self._client(user)
            barrier.wait(timeout=10)
            try:
                results.append(self._retrying(
                    lambda: client.upsert(project, edit.path, content, expected_version=version)))
            except VelocityError as error:
                results.append(error)

        threads = [threading.Thread(target=contend, args=writer) for writer in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        won = [r for r in results if not isinstance(r, Exception)]
        lost = [r for r in results if isinstance(r, VersionConflict)]
        assert len(won) == 1 and len(lost) == 1, f"conflicting writers: {results!r}"
        self.outcome.conflicts_won += 1
        self._ack(project, won[0])

    def _retrying(self, call: Callable[[], T]) -> T:
        """Retry through outages (a dead pooled connection, the server restarting) and rate
        limits; typed refusals from the database pass through."""
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        while True:
            try:
                return call()
            except RateLimited as limited:
                self.outcome.rate_limited += 1
                time.sleep(limited.retry_after_seconds)  # the server says when
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # back off while the database restarts

    def _ack(self, project: UUID, row: Any) -> None:
        with self._acked_lock:
            self.acked.add((project, row.file_path, row.version, row.content_hash))

    def _type(self) -> None:
        """A user typing into one file per project the whole time, through every fault."""
        n = 0
        while self._typing.is_set():
            index = n % len(self.projects)
            content = self.plan.editor_writes[n % len(self.plan.editor_writes)]
            n += 1
            try:
                row = self._client(self.owners[index]).upsert(self.projects[index], TYPED_PATH,
                                                              content)
            except (VelocityError, psycopg.Error, OSError):
                self.outcome.typist_errors += 1
            else:
                self.outcome.typed += 1
                self._ack(self.projects[index], row)
            time.sleep(0.05)  # typing speed

    # -- the promises --------------------------------------------------------------------------
    def check_nothing_foreign(self) -> None:
        """At any moment, every file an agent shows is a version the database holds."""
        for session in self.sessions:
            tree = _tree(session.project_dir)  # first: what it shows must be committed already
            history = self._history_hashes(session.preview.project_id)
            for path, data in tree.items():
                digest = hashlib.sha256(data).hexdigest()
                assert (path, digest) in history, (
                    f"seed {self.plan.seed}: {session.container_id} shows {path!r} "
                    f"(sha256 {digest[:12]}) which the database never held")
                self.outcome.samples_checked += 1

    def wait_for_quiescence(self) -> None:
        """Every agent's tree equals its project's files; every applied seq its last seq."""
        for session in self.sessions:
            project = session.preview.project_id
            try:
                wait_for(lambda s=session, p=project: _tree(s.project_dir)
                         == self.database_files(p),
                         timeout=QUIESCENCE_SECONDS, interval=0.1,
                         message="the agent's tree to equal the database")
            except AssertionError:
                raise AssertionError(self._diagnose(session)) from None
        for session in self.sessions:
            head = head_seq(self.stack.db, session.preview.project_id)
            wait_for(lambda s=session, h=head: self._reported_seq(s) == h, timeout=30,
                     interval=0.1, message=f"the agent's applied seq to reach {head}")
            wait_for(lambda s=session, h=head: self._recorded_seq(s) == h, timeout=30,
                     interval=0.1, message=f"the session row's applied seq to reach {head}")

    def check_acknowledged_writes_kept(self) -> None:
        with self.stack.db.transaction() as conn:
            rows = conn.execute(
                "SELECT project_id, file_path, version, content_hash FROM project_files"
                " WHERE project_id = ANY(%s)", (self.projects,)).fetchall()
        stored = {(p, path, v) for p, path, v, _ in rows}
        hashes = {(p, path, v): h for p, path, v, h in rows}
        with self._acked_lock:
            acked = set(self.acked)
        lost = sorted((str(p), path, v) for p, path, v, _ in acked if (p, path, v) not in stored)
        assert not lost, f"seed {self.plan.seed}: acknowledged writes missing: {lost[:10]}"
        changed = [(path, v) for p, path, v, h in acked
                   if h is not None and hashes[(p, path, v)] != h]
        assert not changed, f"seed {self.plan.seed}: acknowledged versions changed: {changed}"

    def database_files(self, project: UUID) -> dict[str, bytes]:
        """The project's current files as bytes, binaries read from the object store."""
        with self.stack.db.transaction() as conn:
            rows = conn.execute(
                "SELECT file_path, content, storage_key FROM project_files_current"
                " WHERE project_id = %s", (project,)).fetchall()
        return {path: content.encode() if content is not None else self.stack.store.get(key)
                for path, content, key in rows}

    def _history_hashes(self, project: UUID) -> set[tuple[str, str]]:
        with self.stack.db.transaction() as conn:
            rows = conn.execute(
                "SELECT file_path, content_hash FROM project_files"
                " WHERE project_id = %s AND NOT is_deleted", (project,)).fetchall()
        return {(path, digest) for path, digest in rows}

    def _reported_seq(self, session: Session) -> int | None:
        info = self.stack.runtime.status(session.container_id)
        try:
            return httpx.get(info.health_url, timeout=2).json().get("applied_seq")
        except (httpx.HTTPError, ValueError):
            return None

    def _recorded_seq(self, session: Session) -> int | None:
        with self.stack.db.transaction() as conn:
            row = conn.execute("SELECT applied_seq FROM preview_sessions WHERE id = %s",
                               (session.preview.session_id,)).fetchone()
        return row[0] if row else None

    def _diagnose(self, session: Session) -> str:
        disk = _tree(session.project_dir)
        database = self.database_files(session.preview.project_id)
        differing = sorted(p for p in set(disk) | set(database) if disk.get(p) != database.get(p))
        logs = self.stack.runtime.logs(session.container_id, tail=40)
        return (f"seed {self.plan.seed} (plan {self.plan.digest()}): {session.container_id} "
                f"differs from the database in {len(differing)} paths: {differing[:10]}\n"
                f"outcome: {self.outcome}\nagent log:\n{logs}")


def _tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` (in-flight temp files aside), read now; a file or
    directory replaced while we look is skipped (os.walk ignores vanished directories)."""
    tree: dict[str, bytes] = {}
    for folder, _directories, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if name.startswith(TEMP_PREFIX) or path.is_symlink():
                continue
            try:
                tree[path.relative_to(root).as_posix()] = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
    return tree
