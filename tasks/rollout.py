"""Rollout tasks: check a plan, move a flag's percentage, measure health, record every step.

Health is read from `preview_sessions`: the error rate of sessions created in the window and
the lag agents reported in it, for users who have the flag (bucketed by `is_feature_enabled`)
against users who do not. Each change of the flag and the row recording it commit together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.logging import get_run_logger
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from tasks.resources import database
from tasks.retries import RETRY_TRANSIENT
from velocity.errors import InvalidInput

# Every task acts on the world (a flag, a row, a container): none is cached.
STEP: dict[str, Any] = {"cache_policy": NO_CACHE, **RETRY_TRANSIENT}
DEFAULT_STEPS: tuple[int, ...] = (1, 5, 25, 50, 100)
DEFAULT_GATES: dict[str, float] = {
    # Share of flagged sessions created in the window that ended in 'error'.
    "max_error_rate": 0.05,
    # Flagged error rate minus the unflagged one (judged only when both groups have sessions).
    "max_error_rate_increase": 0.02,
    # p95 of the lag flagged users' agents reported in the window.
    "max_lag_ms_p95": 500.0,
    # Error rates are judged only once the flagged group has this many sessions in the window.
    "min_sessions": 1,
}

Action = Literal["start", "raise", "hold", "rollback", "complete"]


class RolloutPlan(BaseModel):
    """A checked rollout request: what the flow will do, before anything changed."""

    flag_key: str
    steps: list[int]
    soak_seconds: float
    gates: dict[str, float]
    window_seconds: float | None


class RolloutStep(BaseModel):
    """One row of feature_flag_rollouts."""

    id: int
    flag_key: str
    step: int
    percentage: int
    action: Action
    gates: dict[str, Any]
    note: str | None
    created_at: datetime


class GroupHealth(BaseModel):
    """Sessions of one side of the flag within the window."""

    sessions: int
    errors: int
    error_rate: float | None
    lag_samples: int
    lag_ms_avg: float | None
    lag_ms_p95: float | None


class HealthReport(BaseModel):
    """What a step measured, the thresholds it was judged by, and which gates it breached."""

    window_start: datetime
    window_end: datetime
    flagged: GroupHealth
    unflagged: GroupHealth
    thresholds: dict[str, float]
    breached: dict[str, str]

    @property
    def passed(self) -> bool:
        return not self.breached

    def reason(self) -> str:
        return "; ".join(self.breached.values())

    def as_gates(self) -> dict[str, Any]:
        """The jsonb recorded on the step."""
        return {**self.model_dump(mode="json"), "passed": self.passed}


def check_rollout_input(flag_key: object, steps: object, soak_seconds: object,
                        gates: object, window_seconds: object = None) -> RolloutPlan:
    """The plan, or InvalidInput naming the first bad field. Reads nothing, changes nothing."""
    if not isinstance(flag_key, str) or not flag_key.strip():
        raise InvalidInput("flag_key must be a non-empty string", field="flag_key")
    if (not isinstance(steps, Sequence) or isinstance(steps, str | bytes) or not steps
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps)):
        raise InvalidInput("steps must be a non-empty list of integer percentages",
                           field="steps", steps=repr(steps))
    step_list = list(steps)
    out_of_range = [s for s in step_list if not 1 <= s <= 100]
    if out_of_range:
        raise InvalidInput(f"steps must lie within 1..100; got {out_of_range}",
                           field="steps", steps=step_list)
    if any(later <= earlier for earlier, later in zip(step_list, step_list[1:], strict=False)):
        raise InvalidInput(f"steps must be strictly increasing; got {step_list}",
                           field="steps", steps=step_list)
    soak = _non_negative("soak_seconds", soak_seconds)
    window = None if window_seconds is None else _non_negative("window_seconds", window_seconds)
    if gates is not None and not isinstance(gates, Mapping):
        raise InvalidInput("gates must be an object of thresholds", field="gates")
    unknown = sorted(set(gates or {}) - set(DEFAULT_GATES))
    if unknown:
        raise InvalidInput(f"unknown gates {unknown}; known gates: {sorted(DEFAULT_GATES)}",
                           field="gates", unknown=unknown)
    thresholds = dict(DEFAULT_GATES)
    for name, value in (gates or {}).items():
        thresholds[name] = _non_negative("gates", value, name=f"gates.{name}")
    return RolloutPlan(flag_key=flag_key, steps=step_list, soak_seconds=soak, gates=thresholds,
                       window_seconds=window)


def _non_negative(field: str, value: object, name: str | None = None) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise InvalidInput(f"{name or field} must be a finite number >= 0; got {value!r}",
                           field=field)
    return float(value)


def evaluate_gates(flagged: GroupHealth, unflagged: GroupHealth,
                   thresholds: Mapping[str, float]) -> dict[str, str]:
    """Each breached gate with a sentence saying why; empty when the step is healthy.

    A side with no data breaches nothing: absence of sessions is no evidence of harm, and
    a soak long enough to gather data is the caller's choice.
    """
    breached: dict[str, str] = {}
    judged = flagged.error_rate is not None and flagged.sessions >= thresholds["min_sessions"]
    if judged and flagged.error_rate is not None:
        if flagged.error_rate > thresholds["max_error_rate"]:
            breached["max_error_rate"] = (
                f"flagged error rate {flagged.error_rate:.3f} ({flagged.errors}/"
                f"{flagged.sessions}) exceeds max_error_rate {thresholds['max_error_rate']}")
        if unflagged.error_rate is not None:
            increase = flagged.error_rate - unflagged.error_rate
            if increase > thresholds["max_error_rate_increase"]:
                breached["max_error_rate_increase"] = (
                    f"flagged error rate {flagged.error_rate:.3f} is {increase:.3f} above the "
                    f"unflagged {unflagged.error_rate:.3f}, more than max_error_rate_increase "
                    f"{thresholds['max_error_rate_increase']}")
    if flagged.lag_ms_p95 is not None and flagged.lag_ms_p95 > thresholds["max_lag_ms_p95"]:
        breached["max_lag_ms_p95"] = (
            f"flagged event lag p95 {flagged.lag_ms_p95:.0f} ms exceeds max_lag_ms_p95 "
            f"{thresholds['max_lag_ms_p95']:.0f} ms")
    return breached


# -- tasks -----------------------------------------------------------------------------------


@task(name="plan-rollout", **STEP)
def plan_rollout(flag_key: str, steps: Sequence[int], soak_seconds: float,
                 gates: Mapping[str, float] | None,
                 window_seconds: float | None = None) -> RolloutPlan:
    """Check the request and that the flag exists; raises InvalidInput naming the field."""
    plan = check_rollout_input(flag_key, steps, soak_seconds, gates, window_seconds)
    with database().transaction() as conn:
        found = conn.execute("SELECT 1 FROM feature_flags WHERE flag_key = %s",
                             (plan.flag_key,)).fetchone()
    if found is None:
        raise InvalidInput(f"no feature flag {plan.flag_key!r}", field="flag_key",
                           flag_key=plan.flag_key)
    return plan


@task(name="start-rollout", **STEP)
def start_rollout(plan: RolloutPlan, flow_run_id: UUID | None = None) -> RolloutStep:
    """Enable the flag and record `start`.

    A disabled flag starts at 0 %, so switching it on exposes nobody before the first step;
    an enabled one keeps its percentage (the ramp never takes a flag away from users).
    """
    with database().transaction() as conn:
        row = conn.execute(
            "SELECT is_enabled, rollout_percentage FROM feature_flags WHERE flag_key = %s"
            " FOR UPDATE", (plan.flag_key,)).fetchone()
        if row is None:
            raise InvalidInput(f"no feature flag {plan.flag_key!r}", field="flag_key")
        was_enabled, was_percentage = row
        percentage = was_percentage if was_enabled else 0
        conn.execute("UPDATE feature_flags SET is_enabled = true, rollout_percentage = %s,"
                     " updated_at = now() WHERE flag_key = %s", (percentage, plan.flag_key))
        gates = {"thresholds": plan.gates, "steps": plan.steps,
                 "soak_seconds": plan.soak_seconds, "window_seconds": plan.window_seconds,
                 "previous": {"is_enabled": was_enabled, "rollout_percentage": was_percentage}}
        return _record(conn, plan.flag_key, flow_run_id, 0, percentage, "start", gates,
                       f"ramp through {plan.steps}")


@task(name="raise-flag", **STEP)
def raise_flag(flag_key: str, step: int, percentage: int, thresholds: Mapping[str, float],
               flow_run_id: UUID | None = None) -> RolloutStep:
    """Set the flag to `percentage` and record `raise` (or `hold` when it is already there).

    The row's created_at is when the new percentage took effect: the soak window's start.
    """
    with database().transaction() as conn:
        row = conn.execute("SELECT rollout_percentage FROM feature_flags WHERE flag_key = %s"
                           " FOR UPDATE", (flag_key,)).fetchone()
        if row is None:
            raise InvalidInput(f"no feature flag {flag_key!r}", field="flag_key")
        before: int = row[0]
        if percentage > before:
            conn.execute("UPDATE feature_flags SET rollout_percentage = %s, updated_at = now()"
                         " WHERE flag_key = %s", (percentage, flag_key))
        action: Action = "raise" if percentage > before else "hold"
        now_at = max(percentage, before)
        note = None if action == "raise" else f"already at {before} %"
        recorded = _record(conn, flag_key, flow_run_id, step, now_at, action,
                           {"thresholds": dict(thresholds), "status": "soaking"}, note)
    _emit("velocity.rollout.step", recorded)
    get_run_logger().info("flag %s: step %d %s to %d %%", flag_key, step, action, now_at)
    return recorded


@task(name="measure-rollout-health", **STEP)
def measure_rollout_health(flag_key: str, since: datetime, thresholds: Mapping[str, float],
                           window_seconds: float | None = None) -> HealthReport:
    """Error rate and event lag of flagged against unflagged users since `since`.

    The window reaches back `window_seconds` from now instead when that is further back.
    Lag is each session's latest report (preview_sessions keeps no history), counted when
    that report arrived within the window.
    """
    with database().transaction() as conn:
        window_start, window_end = conn.execute(
            "SELECT least(%s::timestamptz, now() - make_interval(secs => %s)), now()",
            (since, float(window_seconds or 0))).fetchone()  # type: ignore[misc]
        cursor = conn.cursor(row_factory=dict_row)
        rows = cursor.execute(HEALTH_QUERY, {"flag": flag_key, "start": window_start}).fetchall()
    groups = {True: _empty_group(), False: _empty_group()}
    for row in rows:
        sessions, errors = row["sessions"], row["errors"]
        groups[row["flagged"]] = GroupHealth(
            sessions=sessions, errors=errors,
            error_rate=errors / sessions if sessions else None,
            lag_samples=row["lag_samples"],
            lag_ms_avg=_float(row["lag_ms_avg"]), lag_ms_p95=_float(row["lag_ms_p95"]))
    breached = evaluate_gates(groups[True], groups[False], thresholds)
    return HealthReport(window_start=window_start, window_end=window_end,
                        flagged=groups[True], unflagged=groups[False],
                        thresholds=dict(thresholds), breached=breached)


# One row per side of the flag. The window ends at the transaction's now(): a session
# created later is not visible to it anyway.
HEALTH_QUERY = """
WITH sessions AS (
  SELECT s.status, s.lag_ms,
         s.created_at >= %(start)s AS created_in_window,
         s.heartbeat_at >= %(start)s AND s.lag_ms IS NOT NULL AS lag_in_window,
         is_feature_enabled(%(flag)s, s.user_id) AS flagged
    FROM preview_sessions s
   WHERE s.created_at >= %(start)s OR s.heartbeat_at >= %(start)s
)
SELECT flagged,
       count(*) FILTER (WHERE created_in_window) AS sessions,
       count(*) FILTER (WHERE created_in_window AND status = 'error') AS errors,
       count(*) FILTER (WHERE lag_in_window) AS lag_samples,
       avg(lag_ms) FILTER (WHERE lag_in_window) AS lag_ms_avg,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_ms)
         FILTER (WHERE lag_in_window) AS lag_ms_p95
  FROM sessions
 GROUP BY flagged
"""


@task(name="record-step-health", **STEP)
def record_step_health(step: RolloutStep, report: HealthReport) -> RolloutStep:
    """Attach what the soak measured to the step's row."""
    with database().transaction() as conn:
        return _update_gates(conn, step.id, report.as_gates())


@task(name="roll-back-flag", **STEP)
def roll_back_flag(step: RolloutStep, report: HealthReport,
                   flow_run_id: UUID | None = None) -> RolloutStep:
    """Take the flag away from everyone (0 %, disabled) and record `rollback` with the gates."""
    with database().transaction() as conn:
        conn.execute("UPDATE feature_flags SET rollout_percentage = 0, is_enabled = false,"
                     " updated_at = now() WHERE flag_key = %s", (step.flag_key,))
        _update_gates(conn, step.id, report.as_gates())
        recorded = _record(conn, step.flag_key, flow_run_id, step.step, 0, "rollback",
                           {**report.as_gates(), "from_percentage": step.percentage},
                           report.reason())
    _emit("velocity.rollout.rolled_back", recorded)
    get_run_logger().warning("flag %s rolled back from %d %%: %s", step.flag_key,
                             step.percentage, report.reason())
    return recorded


@task(name="complete-rollout", **STEP)
def complete_rollout(flag_key: str, step: int,
                     flow_run_id: UUID | None = None) -> RolloutStep:
    """Record `complete` at the flag's final percentage."""
    with database().transaction() as conn:
        row = conn.execute("SELECT rollout_percentage FROM feature_flags WHERE flag_key = %s",
                           (flag_key,)).fetchone()
        percentage = row[0] if row else 0
        recorded = _record(conn, flag_key, flow_run_id, step, percentage, "complete",
                           {}, f"every step passed its gates; flag at {percentage} %")
    _emit("velocity.rollout.completed", recorded)
    return recorded


def _record(conn: psycopg.Connection, flag_key: str, flow_run_id: UUID | None, step: int,
            percentage: int, action: Action, gates: Mapping[str, Any],
            note: str | None) -> RolloutStep:
    cursor = conn.cursor(row_factory=dict_row)
    row = cursor.execute(
        "INSERT INTO feature_flag_rollouts (flag_key, flow_run_id, step, percentage, action,"
        " gates, note) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " RETURNING id, flag_key, step, percentage, action, gates, note, created_at",
        (flag_key, flow_run_id, step, percentage, action, Jsonb(dict(gates)), note)).fetchone()
    return RolloutStep.model_validate(row)


def _update_gates(conn: psycopg.Connection, step_id: int,
                  gates: Mapping[str, Any]) -> RolloutStep:
    cursor = conn.cursor(row_factory=dict_row)
    row = cursor.execute(
        "UPDATE feature_flag_rollouts SET gates = %s WHERE id = %s"
        " RETURNING id, flag_key, step, percentage, action, gates, note, created_at",
        (Jsonb(dict(gates)), step_id)).fetchone()
    return RolloutStep.model_validate(row)


def _emit(event: str, step: RolloutStep) -> None:
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"velocity.feature-flag.{step.flag_key}",
                  "prefect.resource.name": step.flag_key},
        payload={"flag_key": step.flag_key, "step": step.step, "percentage": step.percentage,
                 "action": step.action, "note": step.note, "gates": step.gates},
    )


def _empty_group() -> GroupHealth:
    return GroupHealth(sessions=0, errors=0, error_rate=None, lag_samples=0,
                       lag_ms_avg=None, lag_ms_p95=None)


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)
