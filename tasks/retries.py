"""When a task retries: transient failures with exponential backoff and jitter, never others.

A validation or permission error will fail the same way every time, so retrying it only
delays the error the user needs to see.
"""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import ReadTimeoutError
from prefect.tasks import exponential_backoff

from velocity.errors import VelocityError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    httpx.TransportError,
    BotoConnectionError,
    ReadTimeoutError,
    TimeoutError,
    ConnectionError,
)


class TransientError(Exception):
    """Raised by our own code for a failure worth retrying (e.g. an HTTP 5xx or 429)."""


def is_transient(error: BaseException | None) -> bool:
    if error is None or isinstance(error, VelocityError):
        return False
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500 or error.response.status_code == 429
    return isinstance(error, TRANSIENT_ERRORS + (TransientError,))


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry only what is transient."""
    error = state.data if isinstance(state.data, BaseException) else None
    return is_transient(error)


# Keyword arguments for @task: three retries after 0.5, 1 and 2 s, each +-50 % jitter.
RETRY_TRANSIENT: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=0.5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
}
