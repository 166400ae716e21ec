"""Events as the gateway sends them: read once per project, encoded once per topic and
protocol version, split into parts when a frame would be too large."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from velocity.realtime.protocol import Message, Vsn, encode
from velocity.storage import ObjectStore

# Worst-case growth of text when it is escaped into a JSON string (a control character
# becomes \u00XX): a part of this many characters always fits in its frame.
_ESCAPE_GROWTH = 6
_PART_OVERHEAD_BYTES = 2048
# Enough for a reconnect's catch-up to need no query (30 s of typing at 2 edits/s); a longer
# gap reads the log. The windows are most of a gateway's objects, and a full garbage
# collection traverses them all: at 512 per project, 100 busy projects paused it for ~90 ms.
RECENT_EVENTS = 64


class EncodedEvent:
    """One event, its payload held as JSON text once encoded, its frames cached per (topic,
    vsn) on first use.

    Light for the garbage collector: a gateway keeps RECENT_EVENTS of every project, and a
    full collection traverses every container object it holds, stalling each edit in flight.
    As a dataclass with its payload dicts, frame lists and cache dict, 51,200 events took a
    full collection ~90 ms; as this, ~45 ms: an event is one object to traverse, its cache a
    tuple of strings (which the collector stops tracking).
    """

    __slots__ = ("project_id", "seq", "type", "max_frame_bytes", "too_large", "_text",
                 "_payload", "_frames")

    def __init__(self, project_id: UUID, seq: int, type: str, payload: dict[str, Any],
                 max_frame_bytes: int, max_event_bytes: int) -> None:
        self.project_id = project_id
        self.seq = seq
        self.type = type
        self.max_frame_bytes = max_frame_bytes
        self._text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        self.too_large = len(self._text.encode()) > max_event_bytes
        # Kept for the first encoding only (the one on the edit's way out); later ones,
        # for another topic or protocol version, read the text back.
        self._payload: dict[str, Any] | None = payload
        self._frames: tuple[tuple[str, Vsn, tuple[str, ...]], ...] = ()

    def frames(self, topic: str, vsn: Vsn) -> tuple[str, ...]:
        for cached_topic, cached_vsn, frames in self._frames:
            if cached_topic == topic and cached_vsn == vsn:
                return frames
        frames = tuple(self._encode(topic, vsn))
        self._frames += ((topic, vsn, frames),)
        return frames

    def _meta(self) -> dict[str, Any]:
        return {"id": f"{self.project_id}:{self.seq}", "seq": self.seq}

    def _encode(self, topic: str, vsn: Vsn) -> Iterable[str]:
        payload, self._payload = self._payload or json.loads(self._text), None
        whole = encode(Message(topic, "broadcast", {
            "type": "broadcast", "event": self.type, "payload": payload,
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
