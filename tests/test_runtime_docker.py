"""The docker runtime on a real, private Docker engine with the locally built agent image.

End to end as on the process runtime (RPC commit -> gateway -> agent in a container -> bytes
in the workspace), the hardening as `docker inspect` and the container itself report it,
the session flows and the cleanup flow against the engine, and a failure when the engine is
down. Real PostgreSQL, the real service app under uvicorn, the shared Prefect server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flows.cleanup import cleanup
from flows.sessions import provision_session, stop_session
from orchestrator.app import create_app
from tasks import resources
from velocity.db import Actor
from velocity.files import FileClient
from velocity.runtimes import ContainerNotFound, ContainerSpec, RuntimeFailure, get_runtime
from velocity.runtimes.agent_image import (
    agent_image_tag,
    base_tag,
    build_agent_image,
    context_files,
)
from velocity.runtimes.base import CONTAINER_ENV_KEYS, LABEL_PROJECT_ID, LABEL_SESSION_ID
from velocity.runtimes.docker import DockerRuntime
from velocity.sessions import get_session, open_session
from velocity.settings import Settings, get_settings

from .docker_engine import DockerEngine, image_cache_dir, running_docker_engine
from .helpers import wait_for
from .preview import (
    SITE,
    agent_status,
    check_every_kind_of_change_reaches_disk,
    disk_tree,
    head_seq,
    start_preview,
    wait_until_in_sync,
    wait_until_ready,
)
from .servers import free_port, start_server

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    yield from running_docker_engine()


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, docker_engine):
    """The service on loopback and a docker runtime whose workspaces the test can read."""
    home = tmp_path_factory.mktemp("docker-runtime")
    port = free_port()
    settings = Settings(home=home, database_url=database_url, storage=f"local://{home / 'store'}",
                        public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings)
    server = start_server(app, port)
    workspaces = home / "workspaces"
    runtime = DockerRuntime(docker_engine.image, docker_host=docker_engine.url,
                            workspace_root=workspaces)
    yield {"settings": settings, "store": app.state.store, "runtime": runtime,
           "workspaces": workspaces}
    for container in runtime.list():
        runtime.remove(container.container_id)
    server.stop()


@pytest.fixture
def service(db):
    return FileClient(db, Actor.service())


@pytest.fixture
def preview(db, stack, new_project, service):
    project_id, owner = new_project()
    service.bulk_upsert(project_id, [{"file_path": p, "content": c} for p, c in SITE.items()])
    started = start_preview(db, stack["store"], stack["settings"], stack["runtime"],
                            stack["workspaces"], project_id, owner)
    wait_until_ready(db, started, stack["runtime"])
    yield started
    stack["runtime"].remove(started.container.container_id)


def test_hydrate_update_delete_and_bulk_reach_the_container(db, preview, service):
    check_every_kind_of_change_reaches_disk(db, service, preview)
    health = httpx.get(preview.container.health_url, timeout=5)
    assert health.status_code == 200 and health.json()["ready"] is True


def test_a_killed_agent_container_restarted_rehydrates_and_catches_up(db, stack, preview,
                                                                      service, docker_engine):
    runtime, name = stack["runtime"], preview.container.container_id
    docker_engine.client.api.kill(name)  # SIGKILL: the agent gets no chance to say goodbye
    killed = wait_for(lambda: (info := runtime.status(name)).state == "exited" and info,
                      message="the container to be dead")
    assert killed.exit_code == 137
    for n in range(20):
        service.upsert(preview.project_id, "offline.txt", f"written while away {n}")
    service.delete(preview.project_id, "index.html")

    docker_engine.client.api.start(name)  # as a restart policy would
    wait_until_in_sync(db, preview, timeout=30)
    assert (preview.project_dir / "offline.txt").read_text() == "written while away 19"
    assert runtime.logs(name).count("hydrated snapshot") == 2  # once per life of the agent
    wait_for(lambda: (agent_status(db, preview.session_id) or {}).get("applied_seq")
             == head_seq(db, preview.project_id), message="the restarted agent's report")


def test_inspect_shows_limits_read_only_root_no_capabilities_and_only_the_contract(
        stack, preview, docker_engine):
    attrs = docker_engine.client.api.inspect_container(preview.container.container_id)
    host, config = attrs["HostConfig"], attrs["Config"]
    assert host["Memory"] == 512 * MiB and host["MemorySwap"] == 512 * MiB
    assert host["NanoCpus"] == 1_000_000_000 and host["PidsLimit"] == 256
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m"}
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Privileged"] is False and host["Init"] is True
    assert host["NetworkMode"] == "host"
    assert config["User"] == "10001:10001"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert sorted(env) == sorted(CONTAINER_ENV_KEYS)
    assert env == preview.spec.env
    assert config["Labels"][LABEL_SESSION_ID] == str(preview.session_id)
    assert config["Labels"][LABEL_PROJECT_ID] == str(preview.project_id)
    assert [(m["Destination"], m["RW"]) for m in attrs["Mounts"]] == [("/workspace", True)]


def test_inside_only_the_workspace_and_tmp_are_writable_and_no_capability_is_held(
        stack, preview, docker_engine):
    client, name = docker_engine.client.api, preview.container.container_id

    def run(*command: str) -> tuple[int, str]:
        exec_id = client.exec_create(name, list(command))["Id"]
        output = client.exec_start(exec_id).decode()
        return client.exec_inspect(exec_id)["ExitCode"], output

    assert run("id", "-u") == (0, "10001\n")
    code, output = run("touch", "/opt/velocity/x")
    assert code != 0 and "Read-only file system" in output
    code, output = run("touch", "/etc/passwd")
    assert code != 0
    assert run("touch", "/tmp/x")[0] == 0
    assert run("touch", "/workspace/x")[0] == 0
    _, status = run("grep", "-E", "^Cap(Eff|Prm|Bnd):", "/proc/self/status")
    assert [line.split()[1] for line in status.splitlines()] == ["0000000000000000"] * 3
    _, status = run("grep", "^NoNewPrivs:", "/proc/self/status")
    assert status.split()[1] == "1"


def test_stop_ends_the_agent_cleanly_and_remove_leaves_nothing(db, stack, preview):
    runtime, name = stack["runtime"], preview.container.container_id
    assert "agent starting" in runtime.logs(name, tail=200)
    runtime.stop(name, timeout=10)
    stopped = runtime.status(name)
    assert (stopped.state, stopped.exit_code) == ("exited", 0)  # SIGTERM: a clean stop
    assert name in [info.container_id for info in runtime.list()]
    runtime.remove(name)
    with pytest.raises(ContainerNotFound):
        runtime.status(name)
    assert not (stack["workspaces"] / name).exists()
    runtime.stop(name, remove=True)  # a gone container is fine


def test_a_missing_image_fails_clearly_and_leaves_nothing(stack, docker_engine, tmp_path):
    runtime = DockerRuntime("velocity-agent:0000000000000000", docker_host=docker_engine.url,
                            workspace_root=tmp_path)
    session, project = str(uuid.uuid4()), str(uuid.uuid4())
    spec = ContainerSpec(session_id=session, project_id=project, env={
        "PROJECT_ID": project, "SESSION_ID": session, "SNAPSHOT_URL": "http://127.0.0.1:9/s.zip",
        "REALTIME_URL": "ws://127.0.0.1:9/", "REALTIME_TOKEN": "t"})
    with pytest.raises(RuntimeFailure) as raised:
        runtime.start(spec)
    assert "velocity image build" in raised.value.message
    assert runtime.list({LABEL_SESSION_ID: session}) == []
    assert list(tmp_path.iterdir()) == []


def test_the_image_is_rebuilt_only_when_its_content_changes(docker_engine):
    files = context_files()
    assert agent_image_tag(files) == docker_engine.image
    changed = {**files, "usr/lib/python3/dist-packages/agent/main.py": b"# changed\n"}
    assert agent_image_tag(changed) != docker_engine.image
    again = build_agent_image(docker_engine.client, image_cache_dir())
    assert (again.tag, again.built) == (docker_engine.image, False)


def velocity_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, timeout=300)


def test_velocity_image_build_reports_the_current_image(docker_engine):
    built = velocity_cli("image", "build", "--docker-host", docker_engine.url,
                         "--cache-dir", str(image_cache_dir()), "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout) | {"seconds": 0} == {
        "image": docker_engine.image, "base": base_tag(), "built": False, "seconds": 0}


def test_velocity_image_build_without_an_engine_says_so(tmp_path):
    failed = velocity_cli("image", "build", "--docker-host", f"unix://{tmp_path}/none.sock")
    assert failed.returncode == 1 and failed.stdout == ""
    assert "cannot reach the Docker engine" in " ".join(failed.stderr.split())
    assert "Traceback" not in failed.stderr


# -- the flows, reading the runtime from settings ---------------------------------------------


@pytest.fixture
def docker_settings(configured, monkeypatch, docker_engine) -> Iterator[Settings]:
    """The configured settings with the docker runtime on the private engine and the gateway
    under uvicorn, as flows read them."""
    port = free_port()
    monkeypatch.setenv("VELOCITY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("VELOCITY_DOCKER_HOST", docker_engine.url)
    monkeypatch.setenv("VELOCITY_DOCKER_IMAGE", docker_engine.image)
    monkeypatch.setenv("VELOCITY_DOCKER_WORKSPACE_ROOT", str(configured.home / "workspaces"))
    get_settings.cache_clear()
    resources.object_store.cache_clear()
    settings = get_settings()
    server = start_server(create_app(settings), port)
    runtime = get_runtime("docker", settings)
    try:
        yield settings
    finally:
        for container in runtime.list():
            runtime.remove(container.container_id)
        server.stop()


async def test_provision_and_stop_a_session_on_docker(prefect_server, docker_settings, db,
                                                      new_project):
    project_id, owner = new_project()
    FileClient(db, Actor.service()).bulk_upsert(
        project_id, [{"file_path": p, "content": c} for p, c in SITE.items()])
    result = await provision_session(project_id, owner, runtime="docker")
    session = get_session(db, result["id"])
    assert session.status == "active" and session.runtime == "docker"
    workspace = Path(docker_settings.docker_workspace_root or "") / str(session.container_id)
    assert disk_tree(workspace / "project") == {p: c.encode() for p, c in SITE.items()}
    page = httpx.get(f"{session.container_url}/index.html", timeout=5)
    assert page.status_code == 200 and "hello" in page.text

    ended = await stop_session(session.id)
    assert ended["status"] == "ended"
    runtime = get_runtime("docker", docker_settings)
    assert runtime.list({LABEL_SESSION_ID: str(session.id)}) == []
    assert not workspace.exists()


def test_cleanup_removes_an_orphaned_container_and_keeps_a_live_sessions(
        prefect_server, docker_settings, db, new_project):
    runtime = get_runtime("docker", docker_settings)
    project_id, owner = new_project()
    live, _ = open_session(db, project_id, owner, "docker")
    orphan_session = uuid.uuid4()  # no row: whatever started it is gone

    def start(session_id) -> str:
        env = {"PROJECT_ID": str(project_id), "SESSION_ID": str(session_id),
               "SNAPSHOT_URL": "http://127.0.0.1:9/unused.zip",
               "REALTIME_URL": "ws://127.0.0.1:9/realtime/v1/websocket", "REALTIME_TOKEN": "t"}
        return runtime.start(ContainerSpec(session_id=str(session_id),
                                           project_id=str(project_id), env=env)).container_id

    kept, orphan = start(live.id), start(orphan_session)
    summary = cleanup(runtimes=["docker"])
    assert summary["orphaned_containers_removed"] == 1
    with pytest.raises(ContainerNotFound):
        runtime.status(orphan)
    assert runtime.status(kept).labels[LABEL_SESSION_ID] == str(live.id)


async def test_provisioning_when_the_engine_is_down_fails_cleanly(
        prefect_server, configured, monkeypatch, db, new_project, tmp_path):
    monkeypatch.setenv("VELOCITY_DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    monkeypatch.setenv("VELOCITY_DOCKER_IMAGE", "velocity-agent:any")
    get_settings.cache_clear()
    project_id, owner = new_project()
    session, _ = open_session(db, project_id, owner, "docker")
    with pytest.raises(RuntimeFailure) as raised:
        await provision_session(project_id, owner, runtime="docker", session_id=session.id)
    assert "engine is not reachable" in raised.value.message
    row = get_session(db, session.id)
    assert row.status == "error" and row.token_jti is None
    assert row.error_message and "start-container failed" in row.error_message
    assert "Docker engine" in row.error_message


async def test_the_docker_pool_job_template_renders_for_prefect_docker(prefect_server,
                                                                       monkeypatch):
    from prefect_docker.worker import DockerWorkerJobConfiguration

    from deployments.manifest import ROOT

    monkeypatch.setenv("VELOCITY_DOCKER_HOST", "tcp://engine.internal:2375")
    template = json.loads((ROOT / "deployments/docker-job-template.json").read_text())
    job = await DockerWorkerJobConfiguration.from_template_and_values(template, {
        "volumes": ["/var/run/docker.sock:/var/run/docker.sock"], "group_add": ["998"]})
    assert job.env["VELOCITY_DOCKER_HOST"] == "tcp://engine.internal:2375"
    assert {"VELOCITY_DOCKER_IMAGE", "VELOCITY_FLY_APP", "VELOCITY_FLY_API_TOKEN"} <= set(job.env)
    assert not any("JWT" in name or "SERVICE_KEY" in name for name in job.env)
    assert job.volumes == ["/var/run/docker.sock:/var/run/docker.sock"]
    assert job.network_mode == "host" and job.mem_limit == job.memswap_limit == "1g"
    create = job.container_create_kwargs
    assert create["read_only"] is True and create["cap_drop"] == ["ALL"]
    assert create["security_opt"] == ["no-new-privileges:true"]
    assert create["user"] == "10001:10001" and create["group_add"] == ["998"]
