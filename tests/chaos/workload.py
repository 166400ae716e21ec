"""Seeded chaos plans: what to write to which project, and which fault to inject when.

A plan is a pure function of its seed (same seed, same plan, same digest), so a failing seed
replays the same edits and the same faults in the same order; only the interleaving with the
services' own timing differs from run to run.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["gateway_kill", "agent_kill", "postgres_restart", "websocket_cut",
                    "snapshot_cut"]
FAULT_KINDS: tuple[FaultKind, ...] = ("gateway_kill", "agent_kill", "postgres_restart",
                                      "websocket_cut", "snapshot_cut")
EditKind = Literal["update", "delete", "recreate", "bulk", "rename", "binary", "conflict",
                   "large", "dir_swap"]
EDIT_WEIGHTS: dict[EditKind, int] = {"update": 34, "delete": 10, "recreate": 8, "bulk": 12,
                                     "rename": 8, "binary": 8, "conflict": 10, "large": 2,
                                     "dir_swap": 3}
DIRECTORIES = ("", "src/", "src/lib/", "assets/img/", "pages/", "deep/a/b/c/")
SWAPPABLE = ("pages", "src/lib")  # directories a dir_swap turns into a file
NAMES = ("f{n}.js", "ファイル{n}.md", "my file {n}.css", "page{n}.html")
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 \n\t{}();=<>/\"'éüß漢字🙂"
LARGE_BYTES = 1_300_000  # over the gateway's 1 MiB frame: travels in numbered parts


@dataclass(frozen=True)
class Edit:
    """One write to one project. `items` (bulk, rename, dir_swap): (path, content or None for
    a delete); `content` and `other` are the two contenders of a conflict."""

    project: int
    kind: EditKind
    path: str = ""
    content: str = ""
    data: bytes = b""
    other: str = ""
    items: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class Fault:
    """A fault from edit `begin` to edit `end` (the component is restored at `end`)."""

    kind: FaultKind
    begin: int
    end: int
    session: int = 0  # agent_kill, snapshot_cut: whose agent
    mode: str = ""  # postgres_restart: `fast` or `immediate`
    downtime: float = 0.0  # postgres_restart: seconds the server stays down
    count: int = 1  # snapshot_cut: how many downloads are cut


@dataclass(frozen=True)
class Plan:
    seed: int
    sessions: tuple[int, ...]  # the project of each session
    initial: tuple[tuple[tuple[str, str], ...], ...]  # per project: (path, content)
    edits: tuple[Edit, ...]
    faults: tuple[Fault, ...]
    editor_writes: tuple[str, ...] = field(default=())  # the steady typist's contents

    @property
    def projects(self) -> int:
        return len(self.initial)

    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def fault_kinds(self) -> set[str]:
        return {fault.kind for fault in self.faults}


def plan_for(case: str) -> Plan:
    """`short-N`: the short version's plan for seed N; `N`: the long version's."""
    short = case.startswith("short-")
    seed = int(case.removeprefix("short-"))
    return make_plan(seed, projects=2, edits=100, extra_faults=0) if short else make_plan(seed)


def make_plan(seed: int, projects: int = 3, edits: int = 150, extra_faults: int = 3) -> Plan:
    """Every fault kind at least once, plus up to `extra_faults` more, over `edits` edits."""
    rng = random.Random(seed)
    sessions = tuple(range(projects)) + (0,)  # project 0 has two previews
    models: list[dict[str, str]] = []
    initial = []
    for _ in range(projects):
        files = {}
        for n in range(8):
            path = _new_path(rng, files, n)
            if path:
                files[path] = "text"
        models.append(files)
        initial.append(tuple((path, _text(rng)) for path in sorted(files)))
    edit_list = tuple(_edit(rng, models, index) for index in range(edits))
    faults = _faults(rng, edits, len(sessions), extra_faults)
    typing = tuple(f"typing {n}: {_text(rng, 40)}" for n in range(400))
    return Plan(seed, sessions, tuple(initial), edit_list, faults, typing)


def _text(rng: random.Random, longest: int = 1500) -> str:
    return "".join(rng.choices(ALPHABET, k=rng.randint(1, longest)))


def _clashes(files: dict[str, str], path: str) -> bool:
    parts = path.split("/")
    if any("/".join(parts[:n]) in files for n in range(1, len(parts))):
        return True  # an ancestor is a file
    return any(other.startswith(path + "/") for other in files)  # path is a directory


def _new_path(rng: random.Random, files: dict[str, str], salt: int) -> str | None:
    for _ in range(10):
        name = rng.choice(NAMES).format(n=rng.randint(0, 15) + salt % 3)
        path = rng.choice(DIRECTORIES) + name
        if path not in files and not _clashes(files, path):
            return path
    return None


def _edit(rng: random.Random, models: list[dict[str, str]], index: int) -> Edit:
    project = rng.randrange(len(models))
    files = models[project]
    text_files = sorted(p for p, kind in files.items() if kind == "text")
    kind: EditKind = rng.choices(list(EDIT_WEIGHTS), weights=list(EDIT_WEIGHTS.values()))[0]
    if kind in ("delete", "recreate", "rename", "conflict") and not text_files:
        kind = "update"
    if kind == "update":
        existing = rng.random() < 0.7 and text_files
        path = rng.choice(text_files) if existing else _new_path(rng, files, index)
        if path is None:
            return Edit(project, "update", text_files[0] if text_files else "index.html",
                        _text(rng))
        files[path] = "text"
        return Edit(project, "update", path, _text(rng))
    if kind == "delete":
        path = rng.choice(sorted(files))
        del files[path]
        return Edit(project, "delete", path)
    if kind == "recreate":
        path = rng.choice(text_files)
        return Edit(project, "recreate", path, _text(rng))
    if kind == "conflict":
        return Edit(project, "conflict", rng.choice(text_files), _text(rng), other=_text(rng))
    if kind == "rename":
        old = rng.choice(text_files)
        del files[old]
        new = _new_path(rng, files, index) or old
        files[new] = "text"
        return Edit(project, "rename", items=((old, None), (new, _text(rng))))
    if kind == "binary":
        path = _new_path(rng, files, index)
        if path is None:
            return Edit(project, "update", rng.choice(text_files or ["index.html"]), _text(rng))
        path = path.rsplit(".", 1)[0] + ".bin"
        if path in files or _clashes(files, path):
            return Edit(project, "update", rng.choice(text_files or ["index.html"]), _text(rng))
        files[path] = "binary"
        return Edit(project, "binary", path, data=rng.randbytes(rng.randint(1, 40_000)))
    if kind == "large":
        path = _new_path(rng, files, index) or "large.txt"
        files[path] = "text"
        block = _text(rng, 1000) + "\n"
        return Edit(project, "large", path, (block * (LARGE_BYTES // len(block) + 1))[:LARGE_BYTES])
    if kind == "dir_swap":
        directory = rng.choice(SWAPPABLE)
        inside = sorted(p for p in files if p.startswith(directory + "/"))
        if directory in files or _clashes({p: k for p, k in files.items() if p not in inside},
                                          directory):
            return Edit(project, "update", rng.choice(text_files or ["index.html"]), _text(rng))
        for path in inside:
            del files[path]
        files[directory] = "text"
        return Edit(project, "dir_swap",
                    items=tuple((p, None) for p in inside) + ((directory, _text(rng)),))
    items: list[tuple[str, str | None]] = []  # bulk
    for _ in range(rng.randint(2, 20)):
        if files and rng.random() < 0.25:
            path = rng.choice(sorted(files))
            if any(p == path for p, _ in items):
                continue
            del files[path]
            items.append((path, None))
        else:
            new = _new_path(rng, files, index)
            if new is None or any(p == new for p, _ in items):
                continue
            files[new] = "text"
            items.append((new, _text(rng)))
    return Edit(project, "bulk", items=tuple(items))


def _faults(rng: random.Random, edits: int, sessions: int, extra: int) -> tuple[Fault, ...]:
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    kinds += [rng.choice(FAULT_KINDS) for _ in range(rng.randint(0, extra))]
    faults: list[Fault] = []
    for kind in kinds:
        for _ in range(50):
            begin = rng.randint(5, edits - 15)
            end = min(edits - 1, begin + rng.randint(2, 20))
            session = rng.randrange(sessions)
            if not _overlaps(faults, kind, begin, end, session):
                break
        else:
            continue
        if kind == "postgres_restart":
            faults.append(Fault(kind, begin, begin, mode=rng.choice(("fast", "immediate")),
                                downtime=round(rng.uniform(0.2, 1.5), 2)))
        elif kind == "snapshot_cut":
            faults.append(Fault(kind, begin, end, session=session, count=rng.randint(1, 2)))
        else:
            faults.append(Fault(kind, begin, end, session=session))
    return tuple(sorted(faults, key=lambda fault: (fault.begin, fault.kind)))


def _overlaps(faults: list[Fault], kind: str, begin: int, end: int, session: int) -> bool:
    """Two faults of one kind never overlap, and no two agent faults hit one agent at once."""
    agent_faults = ("agent_kill", "snapshot_cut")
    for other in faults:
        if other.end < begin or end < other.begin:
            continue
        if other.kind == kind:
            return True
        if kind in agent_faults and other.kind in agent_faults and other.session == session:
            return True
    return False
