"""The scale-out plan as a model: sizes each tier for a target from the capacities measured on
one machine, checks the target holds (utilisation and modelled p99 propagation), and finds
which tier saturates first as load grows — on one machine, and in the plan as sized.

Inputs are the benchmark figures (bench/*.py, docs/scale.md says which run gave each) and
the workload's assumptions, all flags. Queueing: each tier is M/M/1 per core, the p99 of its
sojourn time is S / (1 - rho) * ln(100) (conservative: a c-core server queues less); the
modelled p99 propagation is the measured one-machine p99 plus network hops plus every tier's
p99 sojourn. Exit status 1 if the plan misses the target (utilisation above the ceiling or
p99 above the goal), so `docs/scale.md` cannot drift from a plan that no longer holds.

    python -m bench.scale_sim --json [--sessions 100000] [--edits-per-session 0.5] ...
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import emit

P99 = math.log(100)


@dataclass(frozen=True)
class Measured:
    """One machine's capacities (2 cores), from the benchmarks."""

    upserts_per_s: float  # single-file upserts/s on the whole machine (clients included)
    upsert_cpu_ms: float  # database CPU per single-file upsert (RPC, trigger, NOTIFY)
    event_read_cpu_ms: float  # database CPU for a gateway to read one event back
    gateway_connections: int  # subscribers one gateway process holds in < 1 GB
    gateway_rss_mib_per_10k: float
    gateway_recent_mib_per_project: float  # its last 512 events of a busy project (bench.load)
    gateway_fanout_per_s: float  # frames one gateway process fans out per second
    snapshot_build_s: float  # a rebuild after one edit of a 1,000-file project, one core
    flow_runs_per_min: float  # provision-shaped flow runs one Prefect server records
    edit_p99_ms: float  # commit -> agent disk, one machine, 100 sessions
    cores: int = 2


@dataclass(frozen=True)
class Workload:
    sessions: int
    edits_per_session: float  # sustained writes/s per session (autosave, typing bursts)
    subscribers_per_session: float  # the agent + the editor's browser
    session_minutes: float  # mean session length: starts/s = sessions / length
    snapshot_reuse: float  # fraction of starts that reuse an unchanged snapshot
    flow_runs_per_session: int  # provision-session + stop-session


@dataclass(frozen=True)
class Plan:
    """What is deployed: units and the cores of each."""

    db_worker_cores: int
    gateway_cores: int
    builder_cores: int
    utilisation_ceiling: float  # size every tier to stay under this
    network_ms: float  # extra hops at scale: gateway<->worker, gateway->container, LB
    p99_goal_ms: float


def demands(load: Workload) -> dict[str, float]:
    writes = load.sessions * load.edits_per_session
    starts = load.sessions / (load.session_minutes * 60)
    return {
        "writes_per_s": writes,
        "event_reads_per_s": writes,  # one gateway group per project reads each event once
        "connections": load.sessions * load.subscribers_per_session,
        "fanout_per_s": writes * load.subscribers_per_session,
        "session_starts_per_s": starts,
        "snapshot_builds_per_s": starts * (1 - load.snapshot_reuse),
        "flow_runs_per_min": starts * 60 * load.flow_runs_per_session,
    }


def one_machine(measured: Measured, load: Workload) -> dict[str, Any]:
    """Sessions at which each component of one measured machine saturates."""
    per_session = demands(Workload(1, load.edits_per_session, load.subscribers_per_session,
                                   load.session_minutes, load.snapshot_reuse,
                                   load.flow_runs_per_session))
    limits = {
        "postgresql_writes": measured.upserts_per_s / per_session["writes_per_s"],
        "gateway_connections": measured.gateway_connections / per_session["connections"],
        "gateway_fanout": measured.gateway_fanout_per_s / per_session["fanout_per_s"],
        "snapshot_builds": measured.cores / measured.snapshot_build_s
        / per_session["snapshot_builds_per_s"],
        "prefect_flow_runs": measured.flow_runs_per_min / per_session["flow_runs_per_min"],
    }
    first = min(limits, key=lambda name: limits[name])
    return {"saturates_at_sessions": {k: round(v) for k, v in limits.items()},
            "first": first, "first_at_sessions": round(limits[first])}


def size(measured: Measured, load: Workload, plan: Plan) -> dict[str, Any]:
    """Units of each tier for `load` under the utilisation ceiling. A gateway process is one
    core; a Prefect unit is what bench.flow_throughput measured: Prefect's API, its
    PostgreSQL and the flow executors sharing two cores."""
    need = demands(load)
    ceiling = plan.utilisation_ceiling
    db_cores = (need["writes_per_s"] * measured.upsert_cpu_ms
                + need["event_reads_per_s"] * measured.event_read_cpu_ms) / 1000 / ceiling
    gateway_by_connections = need["connections"] / (measured.gateway_connections * ceiling)
    gateway_by_fanout = need["fanout_per_s"] / (measured.gateway_fanout_per_s * ceiling)
    gateways = math.ceil(max(gateway_by_connections, gateway_by_fanout))
    builders = need["snapshot_builds_per_s"] * measured.snapshot_build_s / ceiling
    prefect_servers = need["flow_runs_per_min"] / (measured.flow_runs_per_min * ceiling)
    return {
        "citus_workers": math.ceil(db_cores / plan.db_worker_cores),
        "gateway_processes": gateways,
        "gateway_hosts": math.ceil(gateways / plan.gateway_cores),
        "gateway_rss_gib_each": round(
            (need["connections"] / gateways / 10_000 * measured.gateway_rss_mib_per_10k
             + load.sessions / gateways * measured.gateway_recent_mib_per_project) / 1024, 2),
        "snapshot_builder_hosts": math.ceil(builders / plan.builder_cores),
        "prefect_2core_units": math.ceil(prefect_servers),
        "listen_connections": gateways,  # one per gateway process
    }


def utilisation(measured: Measured, load: Workload, plan: Plan, units: dict[str, Any]
                ) -> dict[str, float]:
    need = demands(load)
    db_capacity_ms = units["citus_workers"] * plan.db_worker_cores * 1000
    return {
        "postgresql": (need["writes_per_s"] * measured.upsert_cpu_ms
                       + need["event_reads_per_s"] * measured.event_read_cpu_ms)
        / db_capacity_ms,
        "gateway_connections": need["connections"]
        / (units["gateway_processes"] * measured.gateway_connections),
        "gateway_fanout": need["fanout_per_s"]
        / (units["gateway_processes"] * measured.gateway_fanout_per_s),
        "snapshot_builders": need["snapshot_builds_per_s"] * measured.snapshot_build_s
        / (units["snapshot_builder_hosts"] * plan.builder_cores),
        "prefect": need["flow_runs_per_min"]
        / (units["prefect_2core_units"] * measured.flow_runs_per_min),
    }


def p99_propagation_ms(measured: Measured, plan: Plan, rho: dict[str, float]) -> float:
    """Measured one-machine p99 + network + each hop's M/M/1 p99 sojourn at its load."""
    hops = {"postgresql": measured.upsert_cpu_ms + measured.event_read_cpu_ms,
            "gateway_fanout": 1000 / measured.gateway_fanout_per_s}
    queueing = sum(service / (1 - min(rho[name], 0.999)) * P99
                   for name, service in hops.items())
    return measured.edit_p99_ms + plan.network_ms + queueing


def first_to_saturate(measured: Measured, load: Workload, plan: Plan,
                      units: dict[str, Any]) -> dict[str, Any]:
    """Grow the load on the plan as sized until a tier reaches utilisation 1."""
    factor = 1.0
    while factor < 100:
        grown = Workload(round(load.sessions * factor), load.edits_per_session,
                         load.subscribers_per_session, load.session_minutes,
                         load.snapshot_reuse, load.flow_runs_per_session)
        rho = utilisation(measured, grown, plan, units)
        full = [name for name, value in rho.items() if value >= 1]
        if full:
            return {"tier": full[0], "at_sessions": grown.sessions,
                    "load_factor": round(factor, 2)}
        factor += 0.01
    return {"tier": None, "at_sessions": None, "load_factor": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    add = parser.add_argument
    add("--sessions", type=int, default=100_000)
    add("--edits-per-session", type=float, default=0.5)
    add("--subscribers-per-session", type=float, default=2.0)
    add("--session-minutes", type=float, default=30.0)
    add("--snapshot-reuse", type=float, default=0.5)
    add("--flow-runs-per-session", type=int, default=2)
    add("--upserts-per-s", type=float, default=1100.0, help="bench.rpc_throughput, 4 clients")
    add("--upsert-cpu-ms", type=float, default=0.8, help="bench.rpc_throughput")
    add("--event-read-cpu-ms", type=float, default=0.2,
        help="assumed: an index read of one event row (not measured separately)")
    add("--gateway-connections", type=int, default=10_000, help="bench.gateway_capacity")
    add("--gateway-rss-mib-per-10k", type=float, default=556.0, help="bench.gateway_capacity")
    add("--gateway-recent-mib-per-project", type=float, default=1.8,
        help="bench.load: gateway RSS per busy project once its event window is full")
    add("--gateway-fanout-per-s", type=float, default=25_000.0, help="bench.gateway_capacity")
    add("--snapshot-build-s", type=float, default=0.08, help="bench.snapshot, 1k files, rebuild")
    add("--flow-runs-per-min", type=float, default=222.0, help="bench.flow_throughput, 8 threads")
    add("--edit-p99-ms", type=float, default=16.5, help="bench.edit_latency / bench.load")
    add("--db-worker-cores", type=int, default=16)
    add("--gateway-cores", type=int, default=8)
    add("--builder-cores", type=int, default=8)
    add("--utilisation-ceiling", type=float, default=0.6)
    add("--network-ms", type=float, default=3.0)
    add("--p99-goal-ms", type=float, default=100.0)
    args = parser.parse_args()

    measured = Measured(args.upserts_per_s, args.upsert_cpu_ms, args.event_read_cpu_ms,
                        args.gateway_connections, args.gateway_rss_mib_per_10k,
                        args.gateway_recent_mib_per_project, args.gateway_fanout_per_s,
                        args.snapshot_build_s, args.flow_runs_per_min, args.edit_p99_ms)
    load = Workload(args.sessions, args.edits_per_session, args.subscribers_per_session,
                    args.session_minutes, args.snapshot_reuse, args.flow_runs_per_session)
    plan = Plan(args.db_worker_cores, args.gateway_cores, args.builder_cores,
                args.utilisation_ceiling, args.network_ms, args.p99_goal_ms)
    units = size(measured, load, plan)
    rho = utilisation(measured, load, plan, units)
    p99 = p99_propagation_ms(measured, plan, rho)
    holds = max(rho.values()) <= plan.utilisation_ceiling + 1e-9 and p99 < plan.p99_goal_ms
    figures = {
        "measured": asdict(measured), "workload": asdict(load), "plan": asdict(plan),
        "demand": {k: round(v, 1) for k, v in demands(load).items()},
        "one_machine": one_machine(measured, load),
        "units": units,
        "utilisation": {k: round(v, 3) for k, v in rho.items()},
        "p99_propagation_ms": round(p99, 1),
        "first_to_saturate": first_to_saturate(measured, load, plan, units),
        "plan_holds": holds,
    }
    emit(figures, args.json)
    sys.exit(0 if holds else 1)


if __name__ == "__main__":
    main()
