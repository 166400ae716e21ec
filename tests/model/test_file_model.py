"""Random sequences of file RPC calls, against a real database, checked after every step
against a plain Python model of the expected files, versions and events (docs/database.md).

Each example is a fresh project written by its owner (row-level security and the rate
limit apply): single upserts, deletes, restores, bulk upserts and bulk deletes, with right,
stale and zero `expected_version`s, over a small tree of paths so that no-ops, tombstones,
re-creations and file/directory clashes happen often.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from velocity.db import Actor, Database
from velocity.errors import (
    InvalidBulkPayload,
    InvalidInput,
    NotFound,
    PathConflict,
    VelocityError,
    VersionConflict,
)
from velocity.files import FileClient

from .profiles import model_settings

TYPES_BY_EXTENSION = {"txt": "text", "md": "markdown", "ts": "typescript"}
# Few paths, so that calls meet again: files under files, directories in the way.
PATHS = ["a", "a/b.txt", "a/c.md", "b.txt", "c.md", "d/e.ts", "d", "d/e.ts/f.txt"]
paths = st.sampled_from(PATHS)
contents = st.sampled_from(["", "x", "y", "hello\n", "héllo ✓", "x" * 300])
file_types = st.sampled_from([None, None, None, "text", "markdown"])
# Mostly calls that can succeed, so that projects grow; the rest test the conflicts.
expectations = st.sampled_from(["none"] * 4 + ["current"] * 3 + ["zero", "stale", "previous"])
# 0: the drawn path as is; otherwise one the project has held (see FileRpcMachine.known).
picks = st.integers(0, 9)
# Now and then a bulk call names a path twice, which refuses the whole call.
repeats = st.sampled_from([False] * 7 + [True])


@dataclass(frozen=True)
class Version:
    content: str | None  # None: a tombstone
    file_type: str


class Refused(Exception):
    """The model's verdict that a call fails, with the error type the contract names."""

    def __init__(self, kind: type[VelocityError]) -> None:
        super().__init__(kind.__name__)
        self.kind = kind


@dataclass
class ProjectModel:
    """What the contract says a project holds: every version of every path, and the log."""

    versions: dict[str, list[Version]] = field(default_factory=dict)
    events: list[tuple[str, tuple[tuple[str, str, int], ...]]] = field(default_factory=list)

    def current_version(self, path: str) -> int:
        return len(self.versions.get(path, []))

    def live(self, path: str) -> Version | None:
        history = self.versions.get(path)
        return history[-1] if history and history[-1].content is not None else None

    def live_files(self) -> dict[str, tuple[int, str | None, str]]:
        return {path: (len(history), history[-1].content, history[-1].file_type)
                for path, history in self.versions.items() if history[-1].content is not None}

    def check_expected(self, path: str, expected: int | None) -> None:
        current = self.current_version(path)
        if expected is None or expected == current or (expected == 0 and not self.live(path)):
            return
        raise Refused(VersionConflict)

    def write(self, path: str, content: str, file_type: str | None,
              expected: int | None) -> tuple[int, bool]:
        kind = resolve_type(path, file_type)
        self.check_expected(path, expected)
        live = self.live(path)
        if live is not None and (live.content, live.file_type) == (content, kind):
            return self.current_version(path), False
        if live is None and self.clashes(path):
            raise Refused(PathConflict)
        self.versions.setdefault(path, []).append(Version(content, kind))
        return self.current_version(path), True

    def delete(self, path: str, expected: int | None) -> tuple[int, bool]:
        if path not in self.versions:
            raise Refused(NotFound)
        self.check_expected(path, expected)
        live = self.live(path)
        if live is None:
            return self.current_version(path), False
        self.versions[path].append(Version(None, live.file_type))
        return self.current_version(path), True

    def clashes(self, path: str) -> bool:
        parts = path.split("/")
        ancestors = {"/".join(parts[:depth]) for depth in range(1, len(parts))}
        return any(self.live(other) and (other in ancestors or other.startswith(path + "/"))
                   for other in self.versions)


def resolve_type(path: str, file_type: str | None) -> str:
    if file_type:
        return file_type
    match = re.search(r"\.([^./]+)$", path)
    return TYPES_BY_EXTENSION.get(match.group(1).lower(), "text") if match else "text"


class FileRpcMachine(RuleBasedStateMachine):
    db: Database
    make_project: Any

    def __init__(self) -> None:
        super().__init__()
        self.project_id, owner = self.make_project()
        self.files = FileClient(self.db, Actor.user(owner))
        self.model = ProjectModel()

    def expected(self, choice: str, path: str) -> int | None:
        current = self.model.current_version(path)
        return {"none": None, "current": current, "zero": 0, "stale": current + 1,
                "previous": max(current - 1, 0) if current else 5}[choice]

    def attempt(self, call: Any, verdict: Any) -> Any:
        """Run the model on a copy; commit it only when the database agrees it succeeded."""
        trial = copy.deepcopy(self.model)
        try:
            expected = verdict(trial)
        except Refused as refused:
            try:
                call()
            except VelocityError as error:
                assert type(error) is refused.kind, f"expected {refused.kind}, got {error!r}"
                return None
            raise AssertionError(
                f"the call succeeded; the model expected {refused.kind}") from None
        result = call()
        self.model = trial
        return result, expected

    @rule(path=paths, content=contents, file_type=file_types, choice=expectations)
    def upsert(self, path: str, content: str, file_type: str | None, choice: str) -> None:
        expected_version = self.expected(choice, path)
        outcome = self.attempt(
            lambda: self.files.upsert(self.project_id, path, content, file_type,
                                      expected_version),
            lambda model: model.write(path, content, file_type, expected_version))
        if outcome is not None:
            row, (version, changed) = outcome
            assert row.version == version and row.content == content
            if changed:
                self.model.events.append(("file:update", (("update", path, version),)))

    def known(self, path: str, pick: int) -> str:
        """A path the project has held (when `pick` is not 0 and there is one), else `path`."""
        held = sorted(self.model.versions)
        return held[pick % len(held)] if held and pick else path

    @rule(path=paths, pick=picks, choice=expectations)
    def delete(self, path: str, pick: int, choice: str) -> None:
        path = self.known(path, pick)
        expected_version = self.expected(choice, path)
        outcome = self.attempt(
            lambda: self.files.delete(self.project_id, path, expected_version),
            lambda model: model.delete(path, expected_version))
        if outcome is not None:
            row, (version, changed) = outcome
            assert row.version == version and row.is_deleted
            if changed:
                self.model.events.append(("file:delete", (("delete", path, version),)))

    @rule(path=paths, pick=picks, back=st.integers(0, 3))
    def restore(self, path: str, pick: int, back: int) -> None:
        path = self.known(path, pick)
        version = max(self.model.current_version(path) - back, 1)

        def verdict(model: ProjectModel) -> tuple[int, bool]:
            history = model.versions.get(path, [])
            if version > len(history):
                raise Refused(NotFound)
            old = history[version - 1]
            if old.content is None:
                raise Refused(InvalidInput)
            return model.write(path, old.content, old.file_type, None)

        outcome = self.attempt(lambda: self.files.restore(self.project_id, path, version),
                               verdict)
        if outcome is not None:
            _, (new_version, changed) = outcome
            if changed:
                self.model.events.append(("file:update", (("update", path, new_version),)))

    @rule(items=st.lists(st.tuples(paths, st.sampled_from(["update", "update", "delete"]),
                                   contents, file_types, expectations),
                         max_size=5, unique_by=lambda item: item[0]),
          repeat=repeats)
    def bulk(self, items: list[tuple[str, str, str, str | None, str]], repeat: bool) -> None:
        if repeat and items:
            items = [*items, items[0]]
        payload: list[dict[str, Any]] = []
        for path, action, content, file_type, choice in items:
            item: dict[str, Any] = {"file_path": path,
                                    "expected_version": self.expected(choice, path)}
            if action == "delete":
                item["action"] = "delete"
            else:
                item.update(content=content, file_type=file_type)
            payload.append(item)

        def verdict(model: ProjectModel) -> list[tuple[str, str, int, bool]]:
            if len({item["file_path"] for item in payload}) < len(payload):
                raise Refused(InvalidBulkPayload)
            applied = []
            for item in payload:
                path, expected_version = item["file_path"], item["expected_version"]
                if item.get("action") == "delete":
                    version, changed = model.delete(path, expected_version)
                else:
                    version, changed = model.write(path, item["content"], item["file_type"],
                                                   expected_version)
                applied.append((item.get("action", "update"), path, version, changed))
            return applied

        outcome = self.attempt(lambda: self.files.bulk_upsert(self.project_id, payload),
                               verdict)
        if outcome is not None:
            self.record_bulk(*outcome)

    @rule(chosen=st.lists(st.integers(1, 50), max_size=4), stray=paths, repeat=repeats)
    def bulk_delete(self, chosen: list[int], stray: str, repeat: bool) -> None:
        chosen = list(dict.fromkeys(self.known(stray, pick) for pick in chosen))
        if repeat:
            chosen = [*chosen, stray, stray]
        def verdict(model: ProjectModel) -> list[tuple[str, str, int, bool]]:
            if len(set(chosen)) < len(chosen):
                raise Refused(InvalidBulkPayload)
            return [("delete", path, *model.delete(path, None)) for path in chosen]

        outcome = self.attempt(lambda: self.files.bulk_delete(self.project_id, chosen),
                               verdict)
        if outcome is not None:
            self.record_bulk(*outcome)

    def record_bulk(self, result: Any, applied: list[tuple[str, str, int, bool]]) -> None:
        assert [(f.action, f.file_path, f.version, f.changed) for f in result.files] == applied
        changes = tuple((action, path, version) for action, path, version, changed in applied
                        if changed)
        assert result.changed == len(changes)
        assert result.unchanged == len(applied) - len(changes)
        if changes:
            self.model.events.append(("bulk:apply", changes))
            assert result.seq == len(self.model.events)
        else:
            assert result.seq is None

    @rule(path=paths, pick=picks)
    def history(self, path: str, pick: int) -> None:
        path = self.known(path, pick)
        expected = self.model.versions.get(path)
        if not expected:
            try:
                self.files.history(self.project_id, path)
            except NotFound:
                return
            raise AssertionError(f"history of {path!r} should be not found")
        rows = self.files.history(self.project_id, path)
        assert [(r.version, r.content, r.is_deleted) for r in rows] == [
            (number, version.content, version.content is None)
            for number, version in reversed(list(enumerate(expected, start=1)))]

    @invariant()
    def current_files_match(self) -> None:
        listed = {f.file_path: (f.version, f.content, f.file_type)
                  for f in self.files.list_current(self.project_id)}
        assert listed == self.model.live_files()

    @invariant()
    def events_match(self) -> None:
        """Gap-free seqs from 1, one event per change (bulk: one for all), none for no-ops,
        and each update carrying the content of exactly the version it names."""
        events = self.files.events_since(self.project_id, 0)
        assert [event.seq for event in events] == list(range(1, len(events) + 1))
        seen = []
        for event in events:
            items = event.payload["files"] if event.type == "bulk:apply" else [event.payload]
            for item in items:
                if item["action"] == "update":
                    version = self.model.versions[item["file_path"]][item["version"] - 1]
                    assert item["content"] == version.content
            seen.append((event.type, tuple((item["action"], item["file_path"], item["version"])
                                           for item in items)))
        assert seen == self.model.events


def test_file_rpcs_follow_the_model(db, new_project):
    machine = type("FileRpcs", (FileRpcMachine,), {"db": db,
                                                   "make_project": staticmethod(new_project)})
    run_state_machine_as_test(
        machine, settings=model_settings(examples=30, long_examples=500,
                                         stateful_step_count=20))
