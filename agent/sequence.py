"""Puts the channel's events in seq order: skips duplicates, spots gaps, reassembles parts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PART_EVENT = "velocity:part"


@dataclass(frozen=True)
class Ready:
    """The next event in order, complete: apply it, then call `applied(seq)`."""

    seq: int
    kind: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Duplicate:
    """Already applied (seq <= last): skip."""

    seq: int


@dataclass(frozen=True)
class Gap:
    """Something between `last` and `seq` was missed: rejoin with since_seq = last."""

    last: int
    seq: int


@dataclass(frozen=True)
class Pending:
    """A part of an event whose other parts have not all arrived."""

    seq: int


@dataclass(frozen=True)
class Unsequenced:
    """A broadcast without a seq (another client's message, not a file event): ignore."""

    kind: str


@dataclass(frozen=True)
class Resync:
    """An event that cannot be applied from the channel (malformed or too large parts)."""

    seq: int
    reason: str


Verdict = Ready | Duplicate | Gap | Pending | Unsequenced | Resync


class EventSequencer:
    """Tracks the last applied seq and judges each broadcast against it."""

    def __init__(self, last_seq: int, max_event_bytes: int = 64 * 1024**2) -> None:
        self.last_seq = last_seq
        self._max_event_bytes = max_event_bytes
        self._parts_seq: int | None = None
        self._parts: dict[int, str] = {}
        self._parts_count = 0
        self._parts_bytes = 0

    def reset(self, last_seq: int) -> None:
        """After a rejoin or a hydration: continue from `last_seq`, drop any partial event."""
        self.last_seq = last_seq
        self._drop_parts()

    def applied(self, seq: int) -> None:
        self.last_seq = max(self.last_seq, seq)

    def offer(self, kind: str, payload: object) -> Verdict:
        """Judge one broadcast: `kind` is its event name, `payload` its inner payload."""
        if not isinstance(payload, Mapping):
            return Unsequenced(kind)
        seq = payload.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return Unsequenced(kind)
        if seq <= self.last_seq:
            return Duplicate(seq)
        if seq > self.last_seq + 1:
            return Gap(self.last_seq, seq)
        if kind == PART_EVENT:
            return self._offer_part(seq, payload)
        self._drop_parts()
        return Ready(seq, kind, payload)

    def _offer_part(self, seq: int, part: Mapping[str, Any]) -> Verdict:
        index, count, data, kind = (part.get(key) for key in ("index", "count", "data", "event"))
        if (
            not isinstance(index, int)
            or not isinstance(count, int)
            or not isinstance(data, str)
            or not isinstance(kind, str)
            or not 0 <= index < count
        ):
            return Resync(seq, "malformed_part")
        if self._parts_seq != seq or self._parts_count != count:
            self._drop_parts()
            self._parts_seq, self._parts_count = seq, count
        if index not in self._parts:
            self._parts[index] = data
            self._parts_bytes += len(data)
        if self._parts_bytes > self._max_event_bytes:
            self._drop_parts()
            return Resync(seq, "event_too_large")
        if len(self._parts) < count:
            return Pending(seq)
        text = "".join(self._parts[i] for i in range(count))
        self._drop_parts()
        try:
            payload = json.loads(text)
        except ValueError:
            return Resync(seq, "malformed_part")
        if not isinstance(payload, Mapping):
            return Resync(seq, "malformed_part")
        return Ready(seq, kind, payload)

    def _drop_parts(self) -> None:
        self._parts_seq, self._parts_count, self._parts_bytes = None, 0, 0
        self._parts = {}
