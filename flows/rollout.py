"""The rollout-flag flow: ramp a feature flag step by step, soak, judge health, roll back.

A rollback is a correct outcome, not a failure: the flow returns status "rolled_back" (the
run ends Completed) and the record says which gate tripped and why. Only bad input (an
InvalidInput naming the field, raised before anything changes) or an infrastructure failure
fails the run, so a failed run always means "look at the system", never "the flag was
unhealthy".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Literal
from uuid import UUID

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from tasks.rollout import (
    DEFAULT_STEPS,
    RolloutStep,
    complete_rollout,
    measure_rollout_health,
    plan_rollout,
    raise_flag,
    record_step_health,
    roll_back_flag,
    start_rollout,
)


class RolloutResult(BaseModel):
    """How a rollout ended and every step it recorded, in order."""

    flag_key: str
    status: Literal["completed", "rolled_back"]
    percentage: int
    reason: str | None = None
    steps: list[RolloutStep]


def progress_artifact_key(flag_key: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "rollout-" + (re.sub(r"[^a-z0-9]+", "-", flag_key.lower()).strip("-") or "flag")


@flow(name="rollout-flag", log_prints=False)
async def rollout_flag(
    flag_key: str,
    steps: Sequence[int] = DEFAULT_STEPS,
    soak_seconds: float = 60,
    gates: dict[str, float] | None = None,
    window_seconds: float | None = None,
) -> RolloutResult:
    """Raise `flag_key` through `steps` (percentages), soaking `soak_seconds` after each and
    judging the health `gates` (thresholds; defaults in tasks.rollout.DEFAULT_GATES).

    Health is measured over the soak (since the step took effect), or over the last
    `window_seconds` when that reaches further back.
    """
    run_id = _flow_run_id()
    plan = plan_rollout(flag_key, steps, soak_seconds, gates, window_seconds)
    recorded = [start_rollout(plan, run_id)]
    await _publish(plan.flag_key, recorded)
    for number, percentage in enumerate(plan.steps, start=1):
        step = raise_flag(plan.flag_key, number, percentage, plan.gates, run_id)
        recorded.append(step)
        await _publish(plan.flag_key, recorded)
        await asyncio.sleep(plan.soak_seconds)
        report = measure_rollout_health(plan.flag_key, step.created_at, plan.gates,
                                        plan.window_seconds)
        if not report.passed:
            recorded[-1] = step.model_copy(update={"gates": report.as_gates()})
            recorded.append(roll_back_flag(step, report, run_id))
            await _publish(plan.flag_key, recorded)
            return RolloutResult(flag_key=plan.flag_key, status="rolled_back", percentage=0,
                                 reason=report.reason(), steps=recorded)
        recorded[-1] = record_step_health(step, report)
    done = complete_rollout(plan.flag_key, len(plan.steps), run_id)
    recorded.append(done)
    await _publish(plan.flag_key, recorded)
    return RolloutResult(flag_key=plan.flag_key, status="completed",
                         percentage=done.percentage, steps=recorded)


async def _publish(flag_key: str, recorded: list[RolloutStep]) -> None:
    """A new version of the progress table: one line per recorded step."""
    table = []
    for row in recorded:
        flagged = row.gates.get("flagged") or {}
        unflagged = row.gates.get("unflagged") or {}
        table.append({
            "step": row.step, "action": row.action, "percentage": row.percentage,
            "passed": row.gates.get("passed", ""),
            "flagged_error_rate": flagged.get("error_rate"),
            "unflagged_error_rate": unflagged.get("error_rate"),
            "flagged_lag_ms_p95": flagged.get("lag_ms_p95"),
            "note": row.note or "", "at": row.created_at.isoformat(),
        })
    await acreate_table_artifact(table=table, key=progress_artifact_key(flag_key),
                                 description=f"Rollout of feature flag {flag_key}")


def _flow_run_id() -> UUID | None:
    run_id = flow_run.get_id()
    return UUID(run_id) if run_id else None
