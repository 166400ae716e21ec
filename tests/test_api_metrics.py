"""`/metrics` in Prometheus' format with exactly the names dashboards and alerts query, and
the OpenAPI document the app serves."""

from __future__ import annotations

import gc

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .api_support import running_api

NAMES = {
    "velocity_snapshot_build_seconds": "histogram",
    "velocity_session_start_seconds": "histogram",
    "velocity_event_lag_ms": "histogram",
    "velocity_connected_agents": "gauge",
    "velocity_rpc_errors": "counter",
    "velocity_rpc_requests": "counter",
    "velocity_gc_pause_seconds": "histogram",
}


@pytest.fixture
def api(configured, monkeypatch):
    with running_api(monkeypatch) as running:
        yield running


def test_metrics_expose_the_names(api):
    reply = api.client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    families = {family.name: family.type
                for family in text_string_to_metric_families(reply.text)}
    for name, kind in NAMES.items():
        assert families.get(name) == kind, name
    assert "velocity_connected_agents 0.0" in reply.text
    assert "velocity_snapshot_build_seconds_bucket" in reply.text


def test_each_app_counts_for_itself(api, configured, monkeypatch):
    api.client.post("/rest/v1/rpc/nothing_here", json={}, headers=api.service_headers())
    assert 'velocity_rpc_errors_total{code="PGRST202"} 1.0' in api.client.get("/metrics").text
    with running_api(monkeypatch) as other:
        assert "velocity_rpc_errors_total{" not in other.client.get("/metrics").text


def test_garbage_collections_are_timed_while_the_app_runs(api, configured, monkeypatch):
    def full_collections(text: str) -> float:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (sample.name == "velocity_gc_pause_seconds_count"
                        and sample.labels == {"generation": "2"}):
                    return sample.value
        return 0.0

    before = full_collections(api.client.get("/metrics").text)
    gc.collect()
    gc.collect()
    assert full_collections(api.client.get("/metrics").text) == before + 2
    watching = len(gc.callbacks)
    with running_api(monkeypatch):
        assert len(gc.callbacks) == watching + 1
    assert len(gc.callbacks) == watching  # an app that has stopped times nothing


def test_the_openapi_document_describes_the_api(api):
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {"/sessions/start", "/sessions/stop", "/sessions/{session_id}/status",
                          "/webhooks/{name}", "/rest/v1/rpc/{function}", "/metrics"}
    start = paths["/sessions/start"]["post"]
    assert {"200", "202", "401", "403", "422"} <= set(start["responses"])
    schema = start["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/ValidationErrorBody")
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apikey"}
