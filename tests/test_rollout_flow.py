"""The rollout-flag flow on a real Prefect server against real PostgreSQL: a healthy ramp, a
rollback on each kind of gate, and bad input that changes nothing."""

from __future__ import annotations

import json
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.logging import disable_run_logger

from flows.rollout import progress_artifact_key, rollout_flag
from tasks.rollout import (
    DEFAULT_GATES,
    GroupHealth,
    check_rollout_input,
    evaluate_gates,
    plan_rollout,
)
from velocity.errors import InvalidInput

ONLY_LAG = {"max_error_rate": 1, "max_error_rate_increase": 1}
ONLY_ERRORS = {"max_lag_ms_p95": 1_000_000}


@pytest.fixture
def flag(db) -> str:
    """A new flag of this test alone, disabled at 0 % as the seeds' are."""
    key = f"TEST_ROLLOUT_{uuid.uuid4().hex[:8].upper()}"
    with db.transaction() as conn:
        conn.execute("INSERT INTO feature_flags (flag_key) VALUES (%s)", (key,))
    return key


@pytest.fixture
def project(new_project):
    return new_project()[0]


def flag_state(db, key: str) -> tuple:
    with db.transaction() as conn:
        return conn.execute("SELECT is_enabled, rollout_percentage FROM feature_flags"
                            " WHERE flag_key = %s", (key,)).fetchone()


def rollout_rows(db, key: str) -> list[dict]:
    with db.transaction() as conn:
        rows = conn.execute(
            "SELECT step, percentage, action, gates, note, flow_run_id"
            " FROM feature_flag_rollouts WHERE flag_key = %s ORDER BY id", (key,)).fetchall()
    return [dict(zip(("step", "percentage", "action", "gates", "note", "flow_run_id"), row,
                     strict=True)) for row in rows]


def users_by_side(db, new_user, key: str, below: int, count: int) -> tuple[list, list]:
    """`count` users who have the flag at `below` % and `count` who do not."""
    flagged: list[uuid.UUID] = []
    unflagged: list[uuid.UUID] = []
    for _ in range(400):
        if len(flagged) >= count and len(unflagged) >= count:
            return flagged, unflagged
        user = new_user("rollout")
        with db.transaction() as conn:
            (bucket,) = conn.execute("SELECT internal.flag_bucket(%s, %s)",
                                     (key, user)).fetchone()
        (flagged if bucket < below else unflagged).append(user)
    raise AssertionError("could not find users on both sides of the flag")


def add_session(db, user, project, status: str, lag_ms: int | None = None) -> None:
    ended = status in ("ended", "error")
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO preview_sessions (user_id, project_id, status, lag_ms, heartbeat_at,"
            " ended_at, error_message)"
            " VALUES (%s, %s, %s, %s, now(), CASE WHEN %s THEN now() END, %s)",
            (user, project, status, lag_ms, ended,
             "agent failed" if status == "error" else None))


async def artifact_versions(key: str) -> list[dict]:
    """Every version of an artifact, oldest first. (PrefectClient.read_artifacts sends null or
    join filters for what it is not given, which the server refuses or matches nothing by.)"""
    async with get_client() as client:
        response = await client.request("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 100})
    return sorted(response.json(), key=lambda artifact: artifact["created"])


async def test_a_healthy_rollout_goes_through_every_step(prefect_server, configured, db, flag):
    result = await rollout_flag(flag, steps=[1, 5, 25, 50, 100], soak_seconds=0)

    assert result.status == "completed" and result.percentage == 100 and result.reason is None
    assert flag_state(db, flag) == (True, 100)
    rows = rollout_rows(db, flag)
    assert [(row["action"], row["step"], row["percentage"]) for row in rows] == [
        ("start", 0, 0), ("raise", 1, 1), ("raise", 2, 5), ("raise", 3, 25), ("raise", 4, 50),
        ("raise", 5, 100), ("complete", 5, 100)]
    assert len({row["flow_run_id"] for row in rows}) == 1 and rows[0]["flow_run_id"]
    for row in rows[1:-1]:  # every step recorded with what it measured
        gates = row["gates"]
        assert gates["passed"] is True and gates["breached"] == {}
        assert gates["thresholds"] == DEFAULT_GATES
        assert set(gates["flagged"]) >= {"sessions", "error_rate", "lag_ms_p95"}
        assert gates["window_start"] <= gates["window_end"]
    assert [step.action for step in result.steps] == [row["action"] for row in rows]

    versions = await artifact_versions(progress_artifact_key(flag))
    assert len(versions) == 7  # after start, after each raise, after complete
    assert progress_artifact_key(flag) == f"rollout-{flag.lower().replace('_', '-')}"
    table = json.loads(versions[-1]["data"])
    assert [line["action"] for line in table] == [row["action"] for row in rows]


async def test_a_high_error_rate_among_flagged_users_rolls_back(
        prefect_server, configured, db, new_user, project, flag):
    flagged, unflagged = users_by_side(db, new_user, flag, below=25, count=3)
    for user in flagged:
        add_session(db, user, project, "error")
    for user in unflagged:
        add_session(db, user, project, "ended")

    # The sessions exist already, so the window reaches back over them.
    result = await rollout_flag(flag, steps=[25, 50, 100], soak_seconds=0,
                                gates=ONLY_ERRORS, window_seconds=3600)

    assert result.status == "rolled_back" and result.percentage == 0
    assert "max_error_rate" in (result.reason or "")
    assert flag_state(db, flag) == (False, 0)
    rows = rollout_rows(db, flag)
    assert [(row["action"], row["step"], row["percentage"]) for row in rows] == [
        ("start", 0, 0), ("raise", 1, 25), ("rollback", 1, 0)]
    raised, rollback = rows[1], rows[2]
    assert raised["gates"]["passed"] is False
    assert rollback["gates"]["passed"] is False and rollback["gates"]["from_percentage"] == 25
    assert {"max_error_rate", "max_error_rate_increase"} <= set(rollback["gates"]["breached"])
    assert rollback["gates"]["flagged"]["errors"] >= 3
    assert rollback["gates"]["flagged"]["error_rate"] > DEFAULT_GATES["max_error_rate"]
    assert rollback["gates"]["unflagged"]["error_rate"] < rollback["gates"]["flagged"][
        "error_rate"]
    assert "max_error_rate" in rollback["note"]
    versions = await artifact_versions(progress_artifact_key(flag))
    assert [line["action"] for line in json.loads(versions[-1]["data"])] == [
        "start", "raise", "rollback"]


async def test_a_high_event_lag_among_flagged_users_rolls_back(
        prefect_server, configured, db, new_user, project, flag):
    flagged, unflagged = users_by_side(db, new_user, flag, below=50, count=2)
    for user in flagged:
        add_session(db, user, project, "active", lag_ms=2000)
    for user in unflagged:
        add_session(db, user, project, "active", lag_ms=20)

    result = await rollout_flag(flag, steps=[50, 100], soak_seconds=0, gates=ONLY_LAG,
                                window_seconds=3600)

    assert result.status == "rolled_back" and flag_state(db, flag) == (False, 0)
    rollback = rollout_rows(db, flag)[-1]
    assert rollback["action"] == "rollback" and rollback["step"] == 1
    assert set(rollback["gates"]["breached"]) == {"max_lag_ms_p95"}
    assert rollback["gates"]["flagged"]["lag_ms_p95"] >= 2000
    assert rollback["gates"]["unflagged"]["lag_ms_p95"] <= 20


@pytest.mark.parametrize(("steps", "message"), [
    ([5, 1, 100], "strictly increasing"),
    ([5, 5], "strictly increasing"),
    ([50, 101], "within 1..100"),
    ([0, 100], "within 1..100"),
])
async def test_bad_steps_fail_with_invalid_input_and_change_nothing(
        prefect_server, configured, db, flag, steps, message):
    with pytest.raises(InvalidInput, match=message) as raised:
        await rollout_flag(flag, steps=steps, soak_seconds=0)
    assert raised.value.facts["field"] == "steps"
    assert flag_state(db, flag) == (False, 0)
    assert rollout_rows(db, flag) == []


async def test_an_unknown_flag_fails_with_invalid_input(prefect_server, configured, db):
    with pytest.raises(InvalidInput, match="no feature flag") as raised:
        await rollout_flag("NO_SUCH_FLAG", soak_seconds=0)
    assert raised.value.facts["field"] == "flag_key"
    assert rollout_rows(db, "NO_SUCH_FLAG") == []


def test_every_field_is_checked_before_anything_changes(configured, db, flag):
    cases = [
        (dict(soak_seconds=-1), "soak_seconds"),
        (dict(soak_seconds=float("nan")), "soak_seconds"),
        (dict(steps=[]), "steps"),
        (dict(steps=[True, 5]), "steps"),
        (dict(gates={"max_errors": 0.1}), "gates"),
        (dict(gates={"max_error_rate": -0.1}), "gates"),
        (dict(window_seconds=-5), "window_seconds"),
        (dict(flag_key=""), "flag_key"),
    ]
    for overrides, field in cases:
        arguments = {"flag_key": flag, "steps": [1, 100], "soak_seconds": 0, "gates": None,
                     "window_seconds": None, **overrides}
        with pytest.raises(InvalidInput) as raised:
            check_rollout_input(**arguments)
        assert raised.value.facts["field"] == field, overrides
    with disable_run_logger():
        plan = plan_rollout.fn(flag, [1, 100], 0, {"max_lag_ms_p95": 250})
    assert plan.gates == {**DEFAULT_GATES, "max_lag_ms_p95": 250}
    assert flag_state(db, flag) == (False, 0) and rollout_rows(db, flag) == []


def test_gates_judge_only_what_was_measured():
    def group(sessions: int, errors: int, p95: float | None = None) -> GroupHealth:
        return GroupHealth(sessions=sessions, errors=errors,
                           error_rate=errors / sessions if sessions else None,
                           lag_samples=0 if p95 is None else 1, lag_ms_avg=p95, lag_ms_p95=p95)

    assert evaluate_gates(group(0, 0), group(0, 0), DEFAULT_GATES) == {}
    # No unflagged baseline (e.g. at 100 %): only the absolute rate is judged.
    assert evaluate_gates(group(100, 4), group(0, 0), DEFAULT_GATES) == {}
    assert set(evaluate_gates(group(100, 4), group(100, 1), DEFAULT_GATES)) == {
        "max_error_rate_increase"}
    assert set(evaluate_gates(group(10, 1, 600.0), group(10, 1), DEFAULT_GATES)) == {
        "max_error_rate", "max_lag_ms_p95"}
    assert evaluate_gates(group(1, 1), group(0, 0), {**DEFAULT_GATES, "min_sessions": 5}) == {}
