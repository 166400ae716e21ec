"""Events as the gateway sends them: read once per project, encoded once per topic and
protocol version, split into parts when a frame would be too large."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from velocity.realtime.protocol import Message, Vsn, encode
from velocity.storage import ObjectStore

# Worst-case growth of text when it is escaped into a JSON string (a control character
# becomes \u00XX): a part of this many characters always fits in its frame.
_ESCAPE_GROWTH = 6
_PART_OVERHEAD_BYTES = 2048
RECENT_EVENTS = 512


@dataclass
class EncodedEvent:
    """One event, with its frames cached per (topic, vsn) on first use."""

    project_id: UUID
    seq: int
    type: str
    payload: dict[str, Any]
    max_frame_bytes: int
    max_event_bytes: int
    _text: str = ""
    _frames: dict[tuple[str, Vsn], list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._text = json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)

    @property
    def too_large(self) -> bool:
        return len(self._text.encode()) > self.max_event_bytes

    def frames(self, topic: str, vsn: Vsn) -> list[str]:
        cached = self._frames.get((topic, vsn))
        if cached is None:
            cached = self._frames[(topic, vsn)] = list(self._encode(topic, vsn))
        return cached

    def _meta(self) -> dict[str, Any]:
        return {"id": f"{self.project_id}:{self.seq}", "seq": self.seq}

    def _encode(self, topic: str, vsn: Vsn) -> Iterable[str]:
        whole = encode(Message(topic, "broadcast", {
            "type": "broadcast", "event": self.type, "payload": self.payload,
            "meta": self._meta()}), vsn)
        if len(whole.encode()) <= self.max_frame_bytes:
            yield whole
            return
        size = max(1, (self.max_frame_bytes - _PART_OVERHEAD_BYTES) // _ESCAPE_GROWTH)
        chunks = [self._text[i:i + size] for i in range(0, len(self._text), size)]
        for index, chunk in enumerate(chunks):
            yield encode(Message(topic, "broadcast", {
                "type": "broadcast", "event": "velocity:part",
                "payload": {"seq": self.seq, "event": self.type, "index": index,
                            "count": len(chunks), "data": chunk},
                "meta": self._meta()}), vsn)


def with_download_urls(event_type: str, payload: dict[str, Any], store: ObjectStore,
                       ttl_seconds: int) -> dict[str, Any]:
    """Binary files travel as a signed URL to their bytes, never as a storage key."""

    def sign(item: dict[str, Any]) -> dict[str, Any]:
        key = item.get("storage_key")
        if not key:
            return item
        item = {k: v for k, v in item.items() if k != "storage_key"}
        item["download_url"] = store.signed_url(key, ttl_seconds)
        return item

    if event_type == "bulk:apply":
        return {**payload, "files": [sign(item) for item in payload["files"]]}
    if event_type == "file:update":
        return sign(payload)
    return payload


class RecentEvents:
    """The last few hundred events of a project, so a short catch-up needs no query."""

    def __init__(self, size: int = RECENT_EVENTS) -> None:
        self._events: deque[EncodedEvent] = deque(maxlen=size)

    def add(self, event: EncodedEvent) -> None:
        if self._events and event.seq != self._events[-1].seq + 1:
            self._events.clear()  # keep the window contiguous
        self._events.append(event)

    def after(self, seq: int) -> list[EncodedEvent] | None:
        """Every event after `seq` if the window holds them all, else None."""
        if not self._events or not self._events[0].seq <= seq + 1 <= self._events[-1].seq + 1:
            return None
        start = seq + 1 - self._events[0].seq
        return list(self._events)[start:]
