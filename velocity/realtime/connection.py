"""One websocket: reads Phoenix messages, answers them, and writes frames from a bounded
queue so a slow reader is disconnected instead of slowing anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from velocity.realtime.auth import JoinRefused, authorize, verify_token
from velocity.realtime.hub import Hub, Subscription
from velocity.realtime.protocol import (
    PHOENIX_TOPIC,
    VERSIONS,
    AgentStatusReport,
    Message,
    ProtocolError,
    Vsn,
    decode,
    encode,
    project_of_topic,
    reply,
    system_message,
)

log = logging.getLogger("velocity.realtime")

CLOSE_SLOW_CONSUMER = 4008
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_IDLE = 4000
CLOSE_INTERNAL_ERROR = 1011


class Connection:
    def __init__(self, websocket: WebSocket, hub: Hub, vsn: Vsn, apikey: str | None) -> None:
        self.websocket = websocket
        self.hub = hub
        self.vsn = vsn
        self.apikey = apikey
        self.closed = False
        self.subscriptions: dict[str, Subscription] = {}
        self.queue: asyncio.Queue[str] = asyncio.Queue(hub.settings.realtime_send_queue)
        self._writer: asyncio.Task[None] | None = None

    # -- the outbox the hub writes to ----------------------------------------------------------
    def send_now(self, frames: Sequence[str]) -> bool:
        """Queue frames without waiting; a full queue means a slow consumer: disconnect it."""
        if self.closed:
            return False
        if self.queue.maxsize - self.queue.qsize() < len(frames):
            self._close_soon(CLOSE_SLOW_CONSUMER, "slow consumer")
            return False
        for frame in frames:
            self.queue.put_nowait(frame)
        return True

    async def send_paced(self, frames: Sequence[str]) -> bool:
        """Queue frames, waiting for room: replay goes at the reader's pace."""
        for frame in frames:
            if self.closed:
                return False
            await self.queue.put(frame)
        return not self.closed

    def send_message(self, message: Message) -> None:
        self.send_now([encode(message, self.vsn)])

    def end_subscription(self, subscription: Subscription, code: str, message: str) -> None:
        self.send_message(system_message(subscription.topic, code, message))
        self.send_message(Message(subscription.topic, "phx_close", {}, None,
                                  subscription.join_ref))
        self._drop(subscription)

    def abort(self, reason: str) -> None:
        self._close_soon(CLOSE_INTERNAL_ERROR, reason)

    # -- running -------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.websocket.accept()
        self._writer = asyncio.create_task(self._write_forever())
        try:
            await self._read_forever()
        finally:
            self.closed = True
            for subscription in list(self.subscriptions.values()):
                self.hub.unsubscribe(subscription)
            self.subscriptions.clear()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    async def _read_forever(self) -> None:
        timeout = self.hub.settings.realtime_idle_timeout_seconds
        while not self.closed:
            try:
                raw = await asyncio.wait_for(self.websocket.receive(), timeout)
            except TimeoutError:
                await self._close(CLOSE_IDLE, "heartbeat timeout")
                return
            if raw["type"] == "websocket.disconnect":
                return
            text = raw.get("text")
            if text is None:
                await self._close(CLOSE_PROTOCOL_ERROR, "binary frames are not accepted")
                return
            try:
                message = decode(text, self.vsn)
            except ProtocolError as error:
                await self._close(CLOSE_PROTOCOL_ERROR, str(error)[:120])
                return
            await self._handle(message)

    async def _write_forever(self) -> None:
        try:
            while True:
                await self.websocket.send_text(await self.queue.get())
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True

    def _close_soon(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("closing a connection: %s", reason)
        if self._writer is not None:
            self._writer.cancel()
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        self.closed = True
        if self.websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code, reason)

    # -- messages ------------------------------------------------------------------------------
    async def _handle(self, message: Message) -> None:
        if message.topic == PHOENIX_TOPIC:
            if message.event == "heartbeat":
                self.send_message(reply(message, "ok", {}))
            else:
                self.send_message(reply(message, "error", {"reason": "unknown_event"}))
            return
        if message.event == "phx_join":
            await self._join(message)
            return
        subscription = self.subscriptions.get(message.topic)
        if subscription is None:
            self.send_message(reply(message, "error", {"reason": "unmatched topic"}))
            return
        handler = {
            "phx_leave": self._leave,
            "access_token": self._refresh_token,
            "broadcast": self._client_broadcast,
            "presence": self._presence,
            "velocity:status": self._agent_status,
            "velocity:snapshot": self._snapshot_request,
        }.get(message.event)
        if handler is None:
            self.send_message(reply(message, "error", {"reason": "unknown_event"}))
            return
        await handler(message, subscription)

    async def _join(self, message: Message) -> None:
        project_id = project_of_topic(message.topic)
        if project_id is None:
            self.send_message(reply(message, "error", {"reason": "unknown_topic"}))
            return
        try:
            since_seq = _since_seq(message.payload)
            token = message.payload.get("access_token") or self.apikey
            principal = verify_token(token if isinstance(token, str) else None, project_id,
                                     self.hub.settings)
            await authorize(principal, self.hub.pool)
        except JoinRefused as refused:
            self.send_message(reply(message, "error", {"reason": refused.reason}))
            return
        previous = self.subscriptions.get(message.topic)
        if previous is not None:
            self._drop(previous)
        subscription = Subscription(self, message.topic, project_id, principal, message.join_ref,
                                    broadcast_self=_broadcast_self(message.payload))
        head = await self.hub.subscribe(subscription, since_seq)
        self.subscriptions[message.topic] = subscription
        self.send_message(reply(message, "ok", {"postgres_changes": [],
                                                "velocity": {"head_seq": head}}))
        self._arm_expiry(subscription)
        self.hub.start_catch_up(subscription)

    def _arm_expiry(self, subscription: Subscription) -> None:
        if subscription.expiry is not None:
            subscription.expiry.cancel()
        delay = max(0.0, subscription.principal.expires_at - time.time())
        subscription.expiry = asyncio.get_running_loop().call_later(
            delay, self.end_subscription, subscription, "token_expired",
            "the access token expired")

    def _drop(self, subscription: Subscription) -> None:
        self.hub.unsubscribe(subscription)
        if self.subscriptions.get(subscription.topic) is subscription:
            del self.subscriptions[subscription.topic]

    async def _leave(self, message: Message, subscription: Subscription) -> None:
        self._drop(subscription)
        self.send_message(reply(message, "ok", {}))
        self.send_message(Message(message.topic, "phx_close", {}, message.ref,
                                  subscription.join_ref))

    async def _refresh_token(self, message: Message, subscription: Subscription) -> None:
        token = message.payload.get("access_token")
        try:
            principal = verify_token(token if isinstance(token, str) else None,
                                     subscription.project_id, self.hub.settings)
            if principal.kind != subscription.principal.kind or \
                    principal.subject != subscription.principal.subject:
                raise JoinRefused("wrong_subject")
            await authorize(principal, self.hub.pool)
        except JoinRefused as refused:
            self.end_subscription(subscription, "token_rejected",
                                  f"the new access token was refused: {refused.reason}")
            return
        subscription.principal = principal
        self._arm_expiry(subscription)

    async def _client_broadcast(self, message: Message, subscription: Subscription) -> None:
        acked = message.ref is not None
        if subscription.principal.is_container:
            if acked:
                self.send_message(reply(message, "error", {"reason": "read_only"}))
            return
        if not await self.hub.client_broadcast_enabled(subscription.principal.subject):
            if acked:
                self.send_message(reply(message, "error", {"reason": "client_broadcast_disabled"}))
            return
        event = message.payload.get("event")
        if not isinstance(event, str):
            if acked:
                self.send_message(reply(message, "error", {"reason": "invalid_broadcast"}))
            return
        self.hub.relay(subscription, Message(message.topic, "broadcast", {
            "type": "broadcast", "event": event, "payload": message.payload.get("payload") or {}}))
        if acked:
            self.send_message(reply(message, "ok", {}))

    async def _presence(self, message: Message, subscription: Subscription) -> None:
        self.send_message(reply(message, "ok", {}))

    async def _agent_status(self, message: Message, subscription: Subscription) -> None:
        if not subscription.principal.is_container:
            self.send_message(reply(message, "error", {"reason": "not_an_agent"}))
            return
        try:
            report = AgentStatusReport.model_validate(message.payload)
        except ValidationError as error:
            self.send_message(reply(message, "error", {
                "reason": "invalid_status",
                "message": "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
                                     for item in error.errors(include_url=False))[:500]}))
            return
        status: dict[str, Any] = report.model_dump()
        status["reported_at"] = time.time()
        self.hub.record_status(subscription.principal.subject, status)
        self.send_message(reply(message, "ok", {}))

    async def _snapshot_request(self, message: Message, subscription: Subscription) -> None:
        if not subscription.principal.is_container:
            self.send_message(reply(message, "error", {"reason": "not_an_agent"}))
            return
        try:
            snapshot = await self.hub.snapshot_for(subscription.project_id)
        except Exception as error:  # noqa: BLE001 - reported to the agent, which retries
            log.warning("snapshot for project %s failed: %s", subscription.project_id, error)
            self.send_message(reply(message, "error", {"reason": "snapshot_failed"}))
            return
        self.send_message(reply(message, "ok", snapshot))


def _broadcast_self(payload: dict[str, Any]) -> bool:
    """`config.broadcast.self`; anything but objects along the way means the default, False."""
    config = payload.get("config")
    broadcast = config.get("broadcast") if isinstance(config, dict) else None
    return isinstance(broadcast, dict) and broadcast.get("self") is True


def _since_seq(payload: dict[str, Any]) -> int | None:
    config = payload.get("config")
    velocity = config.get("velocity") if isinstance(config, dict) else None
    if not isinstance(velocity, dict) or velocity.get("since_seq") is None:
        return None
    value = velocity["since_seq"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JoinRefused("invalid_since_seq")
    return value


async def serve_websocket(websocket: WebSocket, hub: Hub) -> None:
    """The `/realtime/v1/websocket` endpoint."""
    vsn = websocket.query_params.get("vsn", "1.0.0")
    if vsn not in VERSIONS:
        await websocket.close(CLOSE_PROTOCOL_ERROR, f"unsupported vsn {vsn!r}")
        return
    connection = Connection(websocket, hub, vsn,  # type: ignore[arg-type]
                            websocket.query_params.get("apikey"))
    await connection.run()

