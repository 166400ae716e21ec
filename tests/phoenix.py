"""A minimal Phoenix-channel test client (vsn 1.0.0 objects or 2.0.0 arrays)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import websockets


class PhoenixClient:
    def __init__(self, websocket: Any, vsn: str) -> None:
        self.ws = websocket
        self.vsn = vsn
        self.ref = 0

    @classmethod
    async def connect(cls, url: str, token: str | None = None, vsn: str = "1.0.0",
                      **kwargs: Any) -> PhoenixClient:
        query = f"?vsn={vsn}" + (f"&apikey={token}" if token else "")
        websocket = await websockets.connect(url + query, max_size=None, **kwargs)
        return cls(websocket, vsn)

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, topic: str, event: str, payload: dict[str, Any],
                   join_ref: str | None = None) -> str:
        self.ref += 1
        ref = str(self.ref)
        if self.vsn == "2.0.0":
            frame: Any = [join_ref, ref, topic, event, payload]
        else:
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref,
                     "join_ref": join_ref}
        await self.ws.send(json.dumps(frame))
        return ref

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        data = json.loads(raw)
        if self.vsn == "2.0.0":
            join_ref, ref, topic, event, payload = data
            return {"topic": topic, "event": event, "payload": payload, "ref": ref,
                    "join_ref": join_ref}
        return data

    async def receive_until(self, predicate: Callable[[dict[str, Any]], bool],
                            timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.receive(max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message

    async def reply_to(self, ref: str, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.receive_until(
            lambda m: m["event"] == "phx_reply" and m["ref"] == ref, timeout)
        return message["payload"]

    async def join(self, topic: str, token: str | None = None, since_seq: int | None = None,
                   **config: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"config": {"broadcast": {"self": False}, "presence": {"key": ""},
                                              "postgres_changes": [], "private": True, **config}}
        if since_seq is not None:
            payload["config"]["velocity"] = {"since_seq": since_seq}
        if token is not None:
            payload["access_token"] = token
        ref = await self.send(topic, "phx_join", payload, join_ref=str(self.ref + 1))
        return await self.reply_to(ref)

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next `count` file events (broadcast payloads), skipping anything else."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            message = await self.receive(max(0.01, deadline - time.monotonic()))
            if message["event"] == "broadcast":
                found.append(message["payload"])
        return found
