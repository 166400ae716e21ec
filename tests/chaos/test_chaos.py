"""Seeded chaos: random edits over several projects while the gateway, agents and PostgreSQL
are killed and websockets and snapshot downloads are cut mid-stream; afterwards every agent
holds exactly the database's files and every session has applied the last seq."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from velocity.download import download_app
from velocity.storage import LocalStore

from ..servers import serving
from .conftest import chaos_cases
from .harness import ChaosRun, ChaosStack
from .proxy import ChaosProxy
from .workload import EDIT_WEIGHTS, FAULT_KINDS, make_plan, plan_for


def test_a_plan_is_a_function_of_its_seed() -> None:
    assert make_plan(11) == make_plan(11)
    assert make_plan(11).digest() == make_plan(11).digest()
    assert make_plan(11).digest() != make_plan(12).digest()
    kinds: set[str] = set()
    assert plan_for("short-3") == make_plan(3, projects=2, edits=100, extra_faults=0)
    assert plan_for("3") == make_plan(3)
    for seed in range(1, 16):
        plan = make_plan(seed)
        assert plan.fault_kinds() == set(FAULT_KINDS), seed
        assert plan_for(f"short-{seed}").fault_kinds() == set(FAULT_KINDS), seed
        kinds |= {edit.kind for edit in plan.edits}
    assert kinds == set(EDIT_WEIGHTS)


def test_the_proxy_cuts_a_snapshot_download_inside_its_body(tmp_path) -> None:
    store = LocalStore(tmp_path / "store", "http://unused", "secret")
    body = bytes(range(256)) * 4000
    store.put_bytes("project-snapshots/p/s.zip", body)
    with serving(download_app(store)) as server:
        proxy = ChaosProxy(server.port, seed=3).start()
        try:
            url = proxy.url + store.signed_url("project-snapshots/p/s.zip", 60)[len("http://unused"):]
            proxy.cut_snapshot_downloads(1)
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.get(url, timeout=10)
            assert proxy.counts.download_cuts == 1
            assert httpx.get(url, timeout=10).content == body  # only the next one was cut
        finally:
            proxy.stop()


def test_a_cut_whose_response_never_came_stays_armed() -> None:
    """The service dies between a snapshot request and its response: the cut must wait for
    the next download, or a chaos run waits for a cut that can no longer happen."""
    body = b"z" * 5000
    with socket.create_server(("127.0.0.1", 0)) as service:
        def serve() -> None:
            for answers in (False, True):
                connection, _ = service.accept()
                with connection:
                    connection.recv(65536)
                    if answers:
                        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                           % (len(body), body))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        proxy = ChaosProxy(service.getsockname()[1], seed=3).start()
        try:
            url = f"{proxy.url}/storage/v1/object/sign/project-snapshots/p/s.zip?token=t"
            proxy.cut_snapshot_downloads(1)
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.get(url, timeout=10)  # the service hangs up without an answer
            assert proxy.counts.download_cuts == 0
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.get(url, timeout=10)
            assert proxy.counts.download_cuts == 1
        finally:
            proxy.stop()
            server.join(timeout=10)


@pytest.mark.parametrize("case", chaos_cases())
def test_chaos_seed(case: str, chaos_stack: ChaosStack, chaos_record: dict[str, Any]) -> None:
    plan = plan_for(case)
    chaos_record.update(case=case, seed=plan.seed, plan=plan.digest())
    run = ChaosRun(chaos_stack, plan)
    before = dataclasses.replace(chaos_stack.proxy.counts)
    try:
        started = time.monotonic()
        run.set_up()
        set_up = time.monotonic() - started
        outcome = run.run()
        started = time.monotonic()
        run.wait_for_quiescence()
        outcome.log.append(f"set-up {set_up:.1f}s, quiescence {time.monotonic() - started:.1f}s")
        run.check_nothing_foreign()
        run.check_acknowledged_writes_kept()
    finally:
        run.tear_down()
    assert set(outcome.faults) == set(FAULT_KINDS)
    assert chaos_stack.proxy.counts.websocket_cuts > before.websocket_cuts
    assert chaos_stack.proxy.counts.download_cuts > before.download_cuts
    assert outcome.conflicts_won == outcome.edits["conflict"] - outcome.refused[
        "conflict: path gone"]
    chaos_record.update(passed=True, outcome={  # asdict would turn a Counter into pairs
        field.name: getattr(outcome, field.name) for field in dataclasses.fields(outcome)})
    print(f"chaos case {case} plan {plan.digest()}: {outcome}")
