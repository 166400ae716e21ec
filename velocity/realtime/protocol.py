"""Phoenix channel messages as Supabase Realtime speaks them: vsn 1.0.0 (JSON objects) and
vsn 2.0.0 (JSON arrays `[join_ref, ref, topic, event, payload]`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from velocity.jsontext import MalformedJson, loads_strict

Vsn = Literal["1.0.0", "2.0.0"]
VERSIONS: tuple[Vsn, ...] = ("1.0.0", "2.0.0")

PHOENIX_TOPIC = "phoenix"
_PROJECT_TOPIC = re.compile(r"^realtime:(?:realtime:)?project:([0-9a-fA-F-]{36})$")


class ProtocolError(ValueError):
    """A frame that is not a Phoenix message; the socket is closed with this reason."""


@dataclass(frozen=True)
class Message:
    topic: str
    event: str
    payload: dict[str, Any]
    ref: str | None = None
    join_ref: str | None = None


class AgentStatusReport(BaseModel):
    """A `velocity:status` payload (docs/realtime.md). The container runs user code, so the
    numbers are bounded to what the session row's columns hold (bigint, integer)."""

    model_config = ConfigDict(extra="ignore")

    ready: bool | None = None
    applied_seq: int | None = Field(default=None, ge=0, lt=2**63)
    lag_ms: float | None = Field(default=None, ge=0, lt=2**31, allow_inf_nan=False)
    dev_server: str | None = None
    error: str | None = None
    hydrations: int | None = Field(default=None, ge=0, lt=2**31)


def decode(raw: str, vsn: Vsn) -> Message:
    try:
        data = loads_strict(raw)
    except MalformedJson as error:
        raise ProtocolError(str(error)) from None
    if vsn == "2.0.0":
        if not isinstance(data, list) or len(data) != 5:
            raise ProtocolError("vsn 2.0.0 messages are [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = data
    else:
        if not isinstance(data, dict):
            raise ProtocolError("vsn 1.0.0 messages are JSON objects")
        join_ref, ref = data.get("join_ref"), data.get("ref")
        topic, event, payload = data.get("topic"), data.get("event"), data.get("payload")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ProtocolError("topic and event must be strings")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ProtocolError("payload must be an object")
    for name, value in (("ref", ref), ("join_ref", join_ref)):
        if value is not None and not isinstance(value, str | int):
            raise ProtocolError(f"{name} must be a string")
    return Message(topic, event, payload,
                   None if ref is None else str(ref), None if join_ref is None else str(join_ref))


def encode(message: Message, vsn: Vsn) -> str:
    if vsn == "2.0.0":
        return json.dumps([message.join_ref, message.ref, message.topic, message.event,
                           message.payload], separators=(",", ":"))
    return json.dumps({"topic": message.topic, "event": message.event,
                       "payload": message.payload, "ref": message.ref,
                       "join_ref": message.join_ref}, separators=(",", ":"))


def reply(request: Message, status: Literal["ok", "error"], response: dict[str, Any]) -> Message:
    return Message(request.topic, "phx_reply", {"status": status, "response": response},
                   request.ref, request.join_ref)


def project_of_topic(topic: str) -> UUID | None:
    """The project a channel topic names, or None for any other topic."""
    match = _PROJECT_TOPIC.match(topic)
    if match is None:
        return None
    try:
        return UUID(match.group(1))
    except ValueError:
        return None


def canonical_topic(project_id: UUID) -> str:
    return f"realtime:project:{project_id}"


def system_message(topic: str, code: str, message: str, **facts: Any) -> Message:
    channel = topic.removeprefix("realtime:")
    return Message(topic, "system", {"channel": channel, "extension": "velocity",
                                     "status": "error", "message": message, "code": code,
                                     **facts})
