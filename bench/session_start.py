"""Session start: API call -> session `active`, over repeated sessions of a 50-file project,
and how much of it is Prefect.

The embedded stack (PostgreSQL, a Prefect server on it, the API under uvicorn) runs as
`velocity demo` runs it. Each round starts a session through `POST /sessions/start`, polls
its status until `active`, then stops it and waits for `ended`. From what Prefect recorded
for each provision-session flow run: `queued` = run created -> running; `tasks` = the sum of
its task runs (of which `wait_ready` is the agent starting: hydration, dev server, join);
`prefect_overhead` = everything in the run that is not a task, plus the queue time.

    python -m bench.session_start --json [--sessions 20] [--files 50] [--runtime process]
    python -m bench.session_start --json --runtime docker [--docker-host unix:///...]

With `--runtime docker` and no `--docker-host` (nor VELOCITY_DOCKER_HOST), a private dockerd
is started for the run (root needed) and the agent image is built into it first (its
debootstrap base cached in ~/.cache/velocity); the build is not part of any round. Goals:
p50 <= 1.5 s on the process runtime, p50 and p95 <= 3 s on docker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from bench.common import emit, percentiles

if TYPE_CHECKING:
    from velocity.runtimes.dockerd import PrivateDockerEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--runtime", default="process", choices=("process", "docker"))
    parser.add_argument("--docker-host", help="Docker engine for --runtime docker; default "
                        "VELOCITY_DOCKER_HOST, else a private dockerd started for the run")
    args = parser.parse_args()
    engine = _docker_engine(args.docker_host) if args.runtime == "docker" else None
    try:
        _measure(args)
    finally:
        if engine is not None:
            engine.stop()


def _measure(args: argparse.Namespace) -> None:

    import uvicorn

    from orchestrator.stack import EmbeddedStack, free_port, settings_for_address
    from velocity import accounts
    from velocity.db import Actor, Database
    from velocity.files import FileClient
    from velocity.tokens import mint_user_token

    port = free_port()
    settings = settings_for_address("127.0.0.1", port)
    stack = EmbeddedStack(settings)
    rounds: list[dict[str, Any]] = []
    try:
        stack.start_database()
        stack.start_prefect()
        from orchestrator.app import create_app  # after PREFECT_API_URL is set

        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1",
                                               port=port, log_level="warning",
                                               ws_per_message_deflate=False))
        serving = threading.Thread(target=server.run, daemon=True)
        serving.start()
        _wait(lambda: server.started, 30)
        with Database(stack.database_url, max_size=2) as db, \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as api:
            user = accounts.create_user(db, f"bench-{uuid.uuid4().hex[:8]}@example.test")
            project = accounts.create_project(db, "session start bench", user)
            FileClient(db, Actor.service()).bulk_upsert(project, [
                {"file_path": f"src/components/Component{i}.jsx",
                 "content": f"export default function C{i}() {{ return <p>{i}</p>; }}\n"}
                for i in range(args.files - 1)] + [
                {"file_path": "index.html", "content": "<h1>bench</h1>"}])
            api.headers["Authorization"] = f"Bearer {mint_user_token(user, 7200, settings)}"
            for _ in range(args.sessions):
                rounds.append(_one_round(api, str(project), args.runtime))
        server.should_exit = True
        serving.join(timeout=60)
    finally:
        stack.stop()

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in rounds if r.get(key) is not None]
        return {**percentiles(values, (50, 95)), "mean": round(statistics.mean(values), 3)} \
            if values else {}

    emit({"runtime": args.runtime, "files": args.files, "sessions": len(rounds),
          "api_to_active_seconds": summary("api_to_active"),
          "flow_queued_seconds": summary("queued"),
          "flow_tasks_seconds": summary("tasks"),
          "wait_ready_task_seconds": summary("wait_ready"),
          "prefect_overhead_seconds": summary("prefect_overhead"),
          **_goals(args.runtime, summary("api_to_active"))}, args.json)


def _goals(runtime: str, api_to_active: dict[str, float]) -> dict[str, bool]:
    if runtime == "docker":
        return {"goal_p50_at_most_3_s": api_to_active.get("p50", 99) <= 3.0,
                "goal_p95_at_most_3_s": api_to_active.get("p95", 99) <= 3.0}
    return {"goal_p50_at_most_1_5_s": api_to_active.get("p50", 99) <= 1.5}


def _docker_engine(docker_host: str | None) -> PrivateDockerEngine | None:
    """Point the docker runtime at an engine holding the agent image: `docker_host`, else
    VELOCITY_DOCKER_HOST, else a private dockerd started here (returned, for stopping)."""
    import docker

    from velocity.runtimes.agent_image import build_agent_image, default_cache_dir
    from velocity.runtimes.dockerd import PrivateDockerEngine

    url = docker_host or os.environ.get("VELOCITY_DOCKER_HOST")
    engine = None if url else PrivateDockerEngine().start()
    if engine is not None:
        url = engine.url
    try:
        client = docker.DockerClient(base_url=url, timeout=600)
        try:
            image = build_agent_image(client, default_cache_dir()).tag
        finally:
            client.close()
    except BaseException:
        if engine is not None:
            engine.stop()
        raise
    os.environ["VELOCITY_DOCKER_HOST"] = str(url)
    os.environ["VELOCITY_DOCKER_IMAGE"] = image
    return engine


def _one_round(api: httpx.Client, project: str, runtime: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = api.post("/sessions/start", json={"projectId": project, "runtime": runtime})
    response.raise_for_status()
    session = response.json()
    _wait(lambda: _status(api, session["statusUrl"]) == "active", 120)
    api_to_active = time.perf_counter() - started
    stopped = api.post("/sessions/stop", json={"sessionId": session["sessionId"]})
    stopped.raise_for_status()
    _wait(lambda: _status(api, session["statusUrl"]) == "ended", 120)
    return {"api_to_active": api_to_active, **_prefect_share(session["flowRunId"])}


def _status(api: httpx.Client, url: str) -> str:
    status = api.get(url).json()
    if status["status"] == "error":
        raise RuntimeError(f"a session failed: {status['error']}")
    return str(status["status"])


def _prefect_share(flow_run_id: str) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
    if run.start_time is None or run.end_time is None or run.created is None:
        return {}
    queued = (run.start_time - run.created).total_seconds()
    duration = (run.end_time - run.start_time).total_seconds()
    task_seconds = sum(t.total_run_time.total_seconds() for t in tasks)
    wait_ready = sum(t.total_run_time.total_seconds() for t in tasks if "wait" in t.name)
    return {"queued": queued, "tasks": task_seconds, "wait_ready": wait_ready,
            "prefect_overhead": queued + max(0.0, duration - task_seconds)}


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)  # polling a condition, with a deadline


if __name__ == "__main__":
    main()
