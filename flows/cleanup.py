"""The cleanup flow, scheduled every minute: dead sessions, orphaned containers, old snapshots
and the event log's retention, each its own retried task.

The parts are independent: one that fails (after its retries) does not keep the others from
running; the run still publishes what was done, then fails with the first error.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.states import State

from tasks.cleanup import (
    CREATING_TIMEOUT_SECONDS,
    EVENT_RETENTION_SECONDS,
    HEARTBEAT_TIMEOUT_SECONDS,
    SNAPSHOT_RETENTION_SECONDS,
    end_dead_sessions,
    prune_events,
    prune_snapshots,
    remove_orphaned_containers,
)


@flow(name="cleanup", log_prints=False)
def cleanup(
    heartbeat_timeout_seconds: float = HEARTBEAT_TIMEOUT_SECONDS,
    creating_timeout_seconds: float = CREATING_TIMEOUT_SECONDS,
    snapshot_retention_seconds: float = SNAPSHOT_RETENTION_SECONDS,
    event_retention_seconds: float = EVENT_RETENTION_SECONDS,
    runtimes: list[str] | None = None,
) -> dict[str, int]:
    """Run every cleanup part once; returns how many things each removed.

    `runtimes` limits the container sweep (default: "process" and every runtime a session
    row names).
    """
    states: dict[str, State[Any]] = {
        "sessions": end_dead_sessions(heartbeat_timeout_seconds, creating_timeout_seconds,
                                      return_state=True),
        "containers": remove_orphaned_containers(runtimes, return_state=True),
        "snapshots": prune_snapshots(snapshot_retention_seconds, return_state=True),
        "events": prune_events(event_retention_seconds, return_state=True),
    }
    results = {part: state.result() for part, state in states.items() if state.is_completed()}
    summary: dict[str, int] = {"failed_parts": len(states) - len(results)}
    if "sessions" in results:
        ended = results["sessions"]
        summary |= {"sessions_ended": ended.ended, "sessions_expired": ended.expired,
                    "sessions_silent": ended.silent,
                    "sessions_stuck_creating": ended.stuck_creating,
                    "session_containers_stopped": ended.containers_stopped}
    if "containers" in results:
        summary |= {"containers_checked": results["containers"].checked,
                    "orphaned_containers_removed": results["containers"].removed}
    if "snapshots" in results:
        summary |= {"snapshots_deleted": results["snapshots"].deleted,
                    "snapshot_bytes_freed": results["snapshots"].bytes}
    if "events" in results:
        summary |= {"events_pruned": results["events"].events,
                    "projects_pruned": results["events"].projects}
    create_table_artifact(
        key="cleanup-summary",
        table=[{"what": name, "count": count} for name, count in summary.items()],
        description="What the last cleanup run removed",
    )
    for state in states.values():
        if not state.is_completed():
            state.result()  # raises the part's error
    return summary
