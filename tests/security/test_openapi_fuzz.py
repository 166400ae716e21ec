"""Every operation of the served OpenAPI document fuzzed with schemathesis as a signed-in
user: requests that fit the schema and requests that break it (wrong types, missing and
extra fields, odd strings). None gets a 5xx, and none changes anything, since the user owns
nothing the generator can name. The service-key run that also validates every response
against the document is tests/test_api_schema.py.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from velocity import accounts

from ..model.profiles import LONG
from .state import unchanged

WITH_INPUT = ["POST /sessions/start", "POST /sessions/stop", "GET /sessions/{session_id}/status",
              "POST /webhooks/{name}", "POST /rest/v1/rpc/{function}"]
WITHOUT_INPUT = ["GET /metrics", "GET /healthz"]  # nothing to break: fitting requests only
CASES = [(label, GenerationMode.POSITIVE) for label in WITH_INPUT + WITHOUT_INPUT] + [
    (label, GenerationMode.NEGATIVE) for label in WITH_INPUT]


@pytest.fixture(scope="module")
def user_headers(db, api):
    user = accounts.create_user(db, "fuzzer@example.test")
    return api.user_headers(user)


@pytest.mark.parametrize("label, mode", CASES,
                         ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_generated_requests_never_get_a_server_error(db, api, storage, user_headers, label,
                                                     mode):
    document = schemathesis.openapi.from_url(f"{api.server.http_url}/openapi.json")
    method, path = label.split(" ", 1)
    operation = document[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=300 if LONG else 25, derandomize=not LONG, deadline=None,
              database=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(base_url=api.server.http_url, headers=user_headers,
                               checks=[not_a_server_error])

    with unchanged(db, storage):
        check()
