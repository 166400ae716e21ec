"""`POST /webhooks/{name}`: signed, timestamped, replay-protected triggers of flows.

A delivery carries `X-Velocity-Timestamp` (unix seconds) and `X-Velocity-Signature`
(`sha256=` + hex HMAC-SHA256 of `f"{timestamp}."` + the raw body, keyed with
VELOCITY_WEBHOOK_SECRET). `name` is a catalogue workflow (the body is its parameters) or
`supabase`, which takes Supabase database-webhook payloads and maps them to a workflow.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Path, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from flows.catalogue import BULK_GENERATE, UnknownWorkflow, Workflow, by_name
from orchestrator.api.context import database, services
from orchestrator.api.errors import error_responses
from velocity.db import Database
from velocity.errors import AuthenticationRequired, ContentTooLarge, NotFound, VelocityError
from velocity.generation import DEFAULT_TEMPLATE
from velocity.jsontext import MalformedJson, loads_strict
from velocity.settings import Settings

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

TIMESTAMP_HEADER = "X-Velocity-Timestamp"
SIGNATURE_HEADER = "X-Velocity-Signature"
TOLERANCE_SECONDS = 300
MAX_BODY_BYTES = 1024 * 1024
SUPABASE = "supabase"


def sign_delivery(secret: str, timestamp: int | str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class DatabaseWebhook(BaseModel):
    """A Supabase database webhook: the changed row of `schema.table`."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["INSERT", "UPDATE", "DELETE"]
    table: str
    schema_name: str = Field(alias="schema")
    record: dict[str, Any] | None = None
    old_record: dict[str, Any] | None = None


class WebhookReply(BaseModel):
    accepted: bool
    workflow: str | None = Field(default=None, description="The workflow started.")
    flowRunId: UUID | None = Field(default=None, description="Its flow run (Prefect).")
    reason: str | None = Field(default=None, description="Why nothing was started.")


@router.post(
    "/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookReply,
    responses={202: {"description": "Started a flow run, or a valid delivery that starts "
                                    "nothing (`accepted: false` with the reason)."},
               **error_responses(401, 404, 413, 422, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"oneOf": [
            DatabaseWebhook.model_json_schema(by_alias=True),
            {"type": "object", "additionalProperties": True,
             "description": "The workflow's parameters by name."}]}}}}},
)
async def receive_webhook(
    request: Request,
    name: Annotated[str, Path(description="A workflow of the catalogue, or `supabase`.")],
    timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> WebhookReply:
    """Verify the delivery, then start the flow it asks for (at most once per signature)."""
    body = await _bounded_body(request)
    db = database(request)
    delivery = verify_delivery(services(request).settings, timestamp, signature, body)
    workflow, parameters, reason = _route(name, _json_object(body))
    if not await run_in_threadpool(_record_delivery, db, delivery):
        raise AuthenticationRequired("this delivery was already received", reason="replayed")
    if workflow is None:
        return WebhookReply(accepted=False, reason=reason)
    try:
        flow_run_id = await services(request).runner.submit(workflow, parameters)
    except VelocityError:
        await run_in_threadpool(_forget_delivery, db, delivery)
        raise
    return WebhookReply(accepted=True, workflow=workflow.name, flowRunId=flow_run_id)


async def _bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = ContentTooLarge(f"a webhook body may hold at most {MAX_BODY_BYTES} bytes",
                                limit=MAX_BODY_BYTES)
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


@dataclass(frozen=True)
class Delivery:
    """A genuine, fresh delivery: its signature is refused again until `expires_at`."""

    signature: str
    expires_at: datetime


def verify_delivery(settings: Settings, timestamp: str | None, signature: str | None,
                    body: bytes, now: float | None = None) -> Delivery:
    """The delivery if it is genuine and fresh; AuthenticationRequired with the reason
    (missing_signature, malformed_timestamp, bad_signature, stale_timestamp) otherwise."""
    if not timestamp or not signature:
        missing = TIMESTAMP_HEADER if not timestamp else SIGNATURE_HEADER
        raise AuthenticationRequired(f"missing header {missing}", reason="missing_signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise AuthenticationRequired(f"{TIMESTAMP_HEADER} must be unix seconds",
                                     reason="malformed_timestamp") from None
    expected = sign_delivery(settings.webhook_signing_secret(), timestamp, body)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise AuthenticationRequired("the signature does not match the body",
                                     reason="bad_signature")
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > TOLERANCE_SECONDS:
        raise AuthenticationRequired(
            f"the timestamp is {abs(int(skew))} s {'old' if skew > 0 else 'in the future'}; "
            f"deliveries are accepted within {TOLERANCE_SECONDS} s", reason="stale_timestamp")
    return Delivery(signature, datetime.fromtimestamp(sent + TOLERANCE_SECONDS, UTC))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = loads_strict(body) if body.strip() else {}
    except MalformedJson as error:
        raise RequestValidationError([{"loc": ("body",), "type": "json_invalid",
                                       "msg": f"the body is not JSON: {error}"}]) from None
    if not isinstance(payload, dict):
        raise RequestValidationError([{"loc": ("body",), "type": "dict_type",
                                       "msg": "the body must be a JSON object"}])
    return payload


def _route(name: str, payload: dict[str, Any]
           ) -> tuple[Workflow | None, dict[str, Any], str | None]:
    """The workflow and parameters a delivery asks for, or None and why it asks nothing."""
    if name == SUPABASE:
        return _route_database_change(payload)
    try:
        return by_name(name), payload, None
    except UnknownWorkflow as unknown:
        raise NotFound(f"no webhook named {name!r}",
                       known=sorted([SUPABASE, *unknown.known])) from None


def _route_database_change(payload: dict[str, Any]
                           ) -> tuple[Workflow | None, dict[str, Any], str | None]:
    try:
        change = DatabaseWebhook.model_validate(payload)
    except ValidationError as error:
        raise RequestValidationError([{**item, "loc": ("body", *item["loc"])}
                                      for item in error.errors(include_url=False)]) from None
    if (change.type, change.schema_name, change.table) == ("INSERT", "public", "projects"):
        record = change.record or {}
        try:
            project_id = UUID(str(record.get("id")))
        except ValueError:
            raise RequestValidationError([{"loc": ("body", "record", "id"), "type": "uuid_type",
                                           "msg": "the new project's id must be a UUID"}]
                                         ) from None
        template = record.get("template") or DEFAULT_TEMPLATE
        return BULK_GENERATE, {"project_id": str(project_id),
                                        "template": str(template)}, None
    return None, {}, (f"no workflow starts on {change.type} of "
                      f"{change.schema_name}.{change.table}")


def _record_delivery(db: Database, delivery: Delivery) -> bool:
    """Whether this is the first time the delivery is seen, in any replica."""
    with db.transaction() as conn:
        row = conn.execute("SELECT internal.record_webhook_delivery(%s, %s)",
                           (delivery.signature, delivery.expires_at)).fetchone()
    return bool(row and row[0])


def _forget_delivery(db: Database, delivery: Delivery) -> None:
    with db.transaction() as conn:
        conn.execute("SELECT internal.forget_webhook_delivery(%s)", (delivery.signature,))
