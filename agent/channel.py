"""A Phoenix channel client (vsn 1.0.0, JSON objects) over websockets: one connection, one
joined topic, heartbeats, pushes matched to their replies, and an inbox of everything else."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from agent.logs import quiet_url_loggers

PHOENIX_TOPIC = "phoenix"
VSN = "1.0.0"
MAX_FRAME_BYTES = 16 * 1024**2
MAX_INBOX_BYTES = 64 * 1024**2

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class Message:
    """One Phoenix message as received."""

    topic: str
    event: str
    payload: Any
    ref: str | None
    join_ref: str | None


class ChannelLost(Exception):
    """The connection or the channel ended (socket closed, phx_close, phx_error): reconnect."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason if code is None else f"{reason} (close code {code})")
        self.reason = reason
        self.code = code


class Refused(Exception):
    """A push (phx_join, velocity:snapshot…) answered with status error; `reason` says why."""

    def __init__(self, event: str, reason: str) -> None:
        super().__init__(f"{event} refused: {reason}")
        self.event = event
        self.reason = reason


class InboxOverflow(Exception):
    """The agent read too slowly and buffered events were dropped: rejoin from the last seq."""


def socket_url(realtime_url: str, token: str) -> str:
    """`REALTIME_URL?apikey=TOKEN&vsn=1.0.0`, keeping any query the URL already has."""
    parts = urlsplit(realtime_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("apikey", "vsn")]
    query += [("apikey", token), ("vsn", VSN)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def join_payload(token: str, since_seq: int) -> dict[str, Any]:
    return {
        "access_token": token,
        "config": {
            "broadcast": {"self": False, "ack": False},
            "presence": {"key": "", "enabled": False},
            "postgres_changes": [],
            "private": True,
            "velocity": {"since_seq": since_seq},
        },
    }


class ChannelConnection:
    """One websocket to the gateway carrying one channel.

    A reader task resolves replies by `ref` and queues every other channel message; the
    inbox is cleared when a join's reply arrives, so after `join()` it holds only what the
    new join sent. Heartbeats go to topic `phoenix`; a heartbeat left unanswered until the
    next one closes the connection.
    """

    def __init__(
        self,
        websocket: ClientConnection,
        topic: str,
        token: str,
        heartbeat_interval: float,
        log: Log,
        max_inbox_bytes: int = MAX_INBOX_BYTES,
    ) -> None:
        self.topic = topic
        self._ws = websocket
        self._token = token
        self._log = log
        self._refs = itertools.count(1)
        self._replies: dict[str, asyncio.Future[Message]] = {}
        self._join_ref: str | None = None
        self._joining_ref: str | None = None
        self._inbox: deque[tuple[Message, int]] = deque()
        self._inbox_bytes = 0
        self._max_inbox_bytes = max_inbox_bytes
        self._overflowed = False
        self._arrived = asyncio.Event()
        self._lost: ChannelLost | None = None
        self._reader = asyncio.create_task(self._read(), name="channel-reader")
        self._heartbeat = asyncio.create_task(
            self._beat(heartbeat_interval), name="channel-heartbeat"
        )

    @classmethod
    async def open(
        cls,
        realtime_url: str,
        token: str,
        topic: str,
        heartbeat_interval: float,
        log: Log,
        open_timeout: float = 10.0,
    ) -> ChannelConnection:
        """Connect (raises OSError, TimeoutError or websockets.InvalidHandshake on failure)."""
        quiet_url_loggers()
        websocket = await websockets.connect(
            socket_url(realtime_url, token),
            open_timeout=open_timeout,
            max_size=MAX_FRAME_BYTES,
            max_queue=64,
            close_timeout=2.0,
        )
        return cls(websocket, topic, token, heartbeat_interval, log)

    @property
    def joined(self) -> bool:
        return self._join_ref is not None and self._lost is None

    async def join(self, since_seq: int, timeout: float) -> Mapping[str, Any]:
        """phx_join asking for every event after `since_seq`; the reply's response, or
        Refused with the gateway's reason."""
        ref = str(next(self._refs))
        self._joining_ref = ref
        try:
            response = await self._request(
                "phx_join",
                join_payload(self._token, since_seq),
                ref=ref,
                join_ref=ref,
                timeout=timeout,
            )
        finally:
            self._joining_ref = None
        return response

    async def leave(self, timeout: float) -> None:
        """phx_leave; the channel's later messages (its phx_close) are dropped."""
        join_ref, self._join_ref = self._join_ref, None
        if join_ref is None or self._lost is not None:
            return
        with contextlib.suppress(Refused):
            await self._request(
                "phx_leave", {}, ref=str(next(self._refs)), join_ref=join_ref, timeout=timeout
            )

    async def rejoin(self, since_seq: int, timeout: float) -> Mapping[str, Any]:
        await self.leave(timeout)
        return await self.join(since_seq, timeout)

    async def push(
        self, event: str, payload: Mapping[str, Any], timeout: float
    ) -> Mapping[str, Any]:
        """Push on the joined channel and wait for its reply's response."""
        if self._join_ref is None:
            raise ChannelLost("not joined")
        return await self._request(
            event, payload, ref=str(next(self._refs)), join_ref=self._join_ref, timeout=timeout
        )

    async def receive(self) -> Message:
        """The next channel message; InboxOverflow or ChannelLost once drained."""
        while True:
            if self._overflowed:
                self._overflowed = False
                raise InboxOverflow()
            if self._inbox:
                message, size = self._inbox.popleft()
                self._inbox_bytes -= size
                return message
            if self._lost is not None:
                raise self._lost
            self._arrived.clear()
            await self._arrived.wait()

    async def close(self) -> None:
        for task in (self._heartbeat, self._reader):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()
        for task in (self._heartbeat, self._reader):
            with contextlib.suppress(BaseException):
                await task
        self._mark_lost(ChannelLost("closed by the agent"))

    async def _request(
        self,
        event: str,
        payload: Mapping[str, Any],
        *,
        ref: str,
        join_ref: str | None,
        timeout: float,
        topic: str | None = None,
    ) -> Mapping[str, Any]:
        if self._lost is not None:
            raise self._lost
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._replies[ref] = reply
        frame = {
            "topic": topic or self.topic,
            "event": event,
            "payload": payload,
            "ref": ref,
            "join_ref": join_ref,
        }
        try:
            await self._send(frame)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for would swallow a
                # cancellation arriving with the reply (gh-86296), so a stopping agent hangs.
                async with asyncio.timeout(timeout):
                    message = await reply
            except TimeoutError:
                raise ChannelLost(f"no reply to {event} within {timeout}s") from None
        finally:
            self._replies.pop(ref, None)
        body = message.payload if isinstance(message.payload, Mapping) else {}
        response = body.get("response")
        response = response if isinstance(response, Mapping) else {}
        if body.get("status") != "ok":
            raise Refused(event, str(response.get("reason") or body.get("status") or "error"))
        return response

    async def _send(self, frame: Mapping[str, Any]) -> None:
        try:
            await self._ws.send(json.dumps(frame, separators=(",", ":")))
        except websockets.ConnectionClosed as error:
            raise self._closed_by(error) from None

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                self._dispatch(raw)
        except websockets.ConnectionClosed as error:
            self._mark_lost(self._closed_by(error))
        except Exception as error:  # a protocol error: the connection is unusable
            self._mark_lost(ChannelLost(f"{type(error).__name__}: {error}"))
        else:
            self._mark_lost(self._closed_by(None))

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            self._log.warning("undecodable frame from the gateway: ignored")
            return
        if not isinstance(data, dict):
            return
        message = Message(
            str(data.get("topic")),
            str(data.get("event")),
            data.get("payload"),
            _text(data.get("ref")),
            _text(data.get("join_ref")),
        )
        if message.event == "phx_reply" and message.ref is not None:
            if message.ref == self._joining_ref:
                # What came before the join's reply belongs to an old join; what follows it
                # (the replay) must be accepted before join() even resumes.
                self._inbox.clear()
                self._inbox_bytes = 0
                self._overflowed = False
                if isinstance(message.payload, Mapping) and message.payload.get("status") == "ok":
                    self._join_ref = message.ref
            reply = self._replies.get(message.ref)
            if reply is not None and not reply.done():
                reply.set_result(message)
            return
        if message.topic != self.topic:
            return
        if message.join_ref is not None and message.join_ref != self._join_ref:
            return  # from a join that was left
        size = len(raw)
        if self._inbox_bytes + size > self._max_inbox_bytes:
            self._inbox.clear()
            self._inbox_bytes = 0
            self._overflowed = True
        else:
            self._inbox.append((message, size))
            self._inbox_bytes += size
        self._arrived.set()

    async def _beat(self, interval: float) -> None:
        pending: asyncio.Task[Mapping[str, Any]] | None = None
        while True:
            await asyncio.sleep(interval)
            if pending is not None and not pending.done():
                self._log.warning(
                    "heartbeat unanswered for %.0fs: closing the connection", interval
                )
                self._mark_lost(ChannelLost("heartbeat timeout"))
                await self._ws.close(code=1001, reason="heartbeat timeout")
                return
            pending = asyncio.create_task(
                self._request(
                    "heartbeat",
                    {},
                    ref=str(next(self._refs)),
                    join_ref=None,
                    timeout=interval * 2,
                    topic=PHOENIX_TOPIC,
                )
            )
            pending.add_done_callback(_ignore_result)

    def _closed_by(self, error: websockets.ConnectionClosed | None) -> ChannelLost:
        code, reason = self._ws.close_code, self._ws.close_reason or ""
        if error is not None and error.rcvd is not None:
            code, reason = error.rcvd.code, error.rcvd.reason
        return ChannelLost(reason or "connection closed", code)

    def _mark_lost(self, lost: ChannelLost) -> None:
        if self._lost is None:
            self._lost = lost
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(self._lost)
        self._arrived.set()


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
