"""The process runtime against real subprocesses: a stand-in agent written here plays the agent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.helpers import wait_for
from velocity.runtimes import (
    CONTAINER_ENV_KEYS,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ProcessRuntime,
    RuntimeFailure,
    UnknownRuntime,
    get_runtime,
    process,
)
from velocity.runtimes.process import proc_stat
from velocity.settings import Settings

PARENT_SECRETS = {
    "VELOCITY_DATABASE_URL": "postgresql://velocity:secret@db/velocity",
    "DATABASE_URL": "postgresql://postgres:secret@db/postgres",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "VELOCITY_TOKEN_KEYS": '{"k1": "signing-secret"}',
}
RUNTIME_KEYS = {"PATH", "HOME", "LANG", "PROJECT_DIR", "PORT", "HEALTH_PORT"}

# The stand-in agent. Modes: serve (trap SIGTERM, leave a marker, exit 0), stubborn (ignore
# SIGTERM, and so does a child it starts), exit CODE (print and exit at once).
STAND_IN = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys
    from pathlib import Path

    def publish(name, value):
        Path(name + ".tmp").write_text(json.dumps(value))
        os.replace(name + ".tmp", name)

    mode = sys.argv[1]
    print("out: agent started", flush=True)
    print("err: agent started", file=sys.stderr, flush=True)
    if mode == "exit":
        sys.exit(int(sys.argv[2]))
    if mode == "serve":
        def on_term(signum, frame):
            Path(os.environ["HOME"], "terminated").write_text("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        publish("env.json", {"env": dict(os.environ), "cwd": os.getcwd()})
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        forever = "import signal\\nwhile True: signal.pause()"
        child = subprocess.Popen([sys.executable, "-c", forever])
        publish("pids.json", {"agent": os.getpid(), "child": child.pid})
    while True:
        signal.pause()
    """
)


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "containers"
    yield root
    cleanup = ProcessRuntime(root)
    for info in cleanup.list():
        cleanup.stop(info.container_id, timeout=1.0)


def runtime_for(root: Path, stand_in: Path, *mode: str) -> ProcessRuntime:
    return ProcessRuntime(root, agent_command=[sys.executable, str(stand_in), *mode])


def make_spec(
    labels: dict[str, str] | None = None, dev_command: str | None = None
) -> ContainerSpec:
    session_id, project_id = str(uuid.uuid4()), str(uuid.uuid4())
    env = {
        "PROJECT_ID": project_id,
        "SESSION_ID": session_id,
        "SNAPSHOT_URL": "http://127.0.0.1:8000/download/snap.zip?sig=abc#sha256=00&watermark=3",
        "REALTIME_URL": "ws://127.0.0.1:8000/realtime/v1/websocket",
        "REALTIME_TOKEN": "header.payload.signature",
    }
    return ContainerSpec(
        session_id=session_id,
        project_id=project_id,
        env=env,
        labels=labels or {},
        dev_command=dev_command,
    )


def read_json(path: Path) -> dict:
    wait_for(path.exists, message=str(path))
    return json.loads(path.read_text())


def session_of(info: ContainerInfo) -> str:
    return info.labels["velocity.session_id"]


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat.state not in "ZX"


@pytest.mark.parametrize("dev_command", [None, "npm run dev -- --host 127.0.0.1"])
def test_environment_is_the_contract_and_nothing_of_the_parent(
    root: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch, dev_command: str | None
) -> None:
    for key, value in PARENT_SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LANG", "C.UTF-8")  # no C-locale coercion in the stand-in's Python
    spec = make_spec(dev_command=dev_command)
    info = runtime_for(root, stand_in, "serve").start(spec)
    container_dir = root.resolve() / info.container_id

    seen = read_json(container_dir / "env.json")
    env = seen["env"]
    expected = set(CONTAINER_ENV_KEYS) | RUNTIME_KEYS | ({"DEV_COMMAND"} if dev_command else set())
    assert set(env) == expected
    assert not set(PARENT_SECRETS) & set(env)
    assert {key: env[key] for key in CONTAINER_ENV_KEYS} == spec.env
    assert env["HOME"] == seen["cwd"] == str(container_dir)
    assert env["PROJECT_DIR"] == str(container_dir / "project")
    assert Path(env["PROJECT_DIR"]).is_dir()
    assert env.get("DEV_COMMAND") == dev_command
    assert info.url == f"http://127.0.0.1:{env['PORT']}"
    assert info.health_url == f"http://127.0.0.1:{env['HEALTH_PORT']}/healthz"
    assert env["PORT"] != env["HEALTH_PORT"]
    assert info.state == "running"
    assert info.labels == {
        "velocity.session_id": spec.session_id,
        "velocity.project_id": spec.project_id,
        "velocity.managed": "true",
    }
    record = json.loads((container_dir / "container.json").read_text())
    assert spec.env["REALTIME_TOKEN"] not in json.dumps(record)  # no secret on disk


@pytest.mark.parametrize(
    "change",
    [
        {"DATABASE_URL": "postgresql://x"},
        {"REALTIME_TOKEN": None},
        {"SESSION_ID": "another-session"},
        {"SNAPSHOT_URL": ""},
    ],
    ids=["sixth-variable", "missing-variable", "mismatched-session", "empty-value"],
)
def test_invalid_environment_is_refused_and_nothing_starts(
    root: Path, stand_in: Path, change: dict[str, str | None]
) -> None:
    spec = make_spec()
    env = dict(spec.env)
    for key, value in change.items():
        if value is None:
            del env[key]
        else:
            env[key] = value
    with pytest.raises(ValidationError):
        ContainerSpec(session_id=spec.session_id, project_id=spec.project_id, env=env)

    spec.env.clear()  # a valid spec whose env was changed in place afterwards
    spec.env.update(env)
    with pytest.raises(ValidationError):
        runtime_for(root, stand_in, "serve").start(spec)
    assert not root.exists() or not any(root.iterdir())


def test_reserved_labels_are_the_runtimes() -> None:
    with pytest.raises(ValidationError, match="set by the runtime"):
        make_spec(labels={"velocity.managed": "false"})


def test_missing_agent_command_is_a_runtime_failure(root: Path) -> None:
    runtime = ProcessRuntime(root, agent_command=["velocity-no-such-agent"])
    with pytest.raises(RuntimeFailure, match="velocity-no-such-agent"):
        runtime.start(make_spec())
    assert not root.exists() or not any(root.iterdir())


def test_graceful_stop(root: Path, stand_in: Path) -> None:
    runtime = runtime_for(root, stand_in, "serve")
    info = runtime.start(make_spec())
    container_dir = root.resolve() / info.container_id
    read_json(container_dir / "env.json")  # the SIGTERM handler is in place

    began = time.monotonic()
    runtime.stop(info.container_id, timeout=10.0)
    assert time.monotonic() - began < 5.0
    assert (container_dir / "terminated").read_text() == "SIGTERM"
    after = runtime.status(info.container_id)
    assert (after.state, after.exit_code) == ("exited", 0)
    assert "out: agent started" in runtime.logs(info.container_id)  # kept after stop

    runtime.stop(info.container_id)  # again: harmless
    assert runtime.status(info.container_id).exit_code == 0


def test_forced_kill_takes_the_whole_group(root: Path, stand_in: Path) -> None:
    runtime = runtime_for(root, stand_in, "stubborn")
    info = runtime.start(make_spec())
    pids = read_json(root.resolve() / info.container_id / "pids.json")
    assert alive(pids["agent"]) and alive(pids["child"])

    began = time.monotonic()
    runtime.stop(info.container_id, timeout=0.5)
    assert time.monotonic() - began >= 0.5
    assert not alive(pids["agent"]) and not alive(pids["child"])
    after = runtime.status(info.container_id)
    assert (after.state, after.exit_code) == ("exited", 137)


def test_exit_on_its_own_reports_code_and_logs(root: Path, stand_in: Path) -> None:
    runtime = runtime_for(root, stand_in, "exit", "3")
    info = runtime.start(make_spec())

    ended = wait_for(
        lambda: (s := runtime.status(info.container_id)).state == "exited" and s,
        message="the agent to exit",
    )
    assert ended.exit_code == 3
    logs = runtime.logs(info.container_id)
    assert "out: agent started" in logs and "err: agent started" in logs
    assert runtime.logs(info.container_id, tail=1).count("agent started") == 1
    assert runtime.logs(info.container_id, tail=0) == ""
    record = json.loads((root.resolve() / info.container_id / "container.json").read_text())
    init = proc_stat(record["pid"])
    assert init is None or init.start_ticks != record["start_ticks"]  # reaped, not a zombie


def test_list_filters_by_label_and_survives_a_new_runtime(root: Path, stand_in: Path) -> None:
    first = runtime_for(root, stand_in, "serve")
    blue = first.start(make_spec(labels={"pool": "blue"}))
    green = first.start(make_spec(labels={"pool": "green"}))

    restarted = ProcessRuntime(root)  # what a restarted orchestrator builds from settings
    assert {i.container_id for i in restarted.list()} == {blue.container_id, green.container_id}
    assert [i.container_id for i in restarted.list({"pool": "blue"})] == [blue.container_id]
    by_session = {"velocity.session_id": session_of(green), "velocity.managed": "true"}
    assert [i.container_id for i in restarted.list(by_session)] == [green.container_id]
    assert restarted.list({"pool": "red"}) == []
    assert restarted.status(blue.container_id) == blue

    restarted.stop(blue.container_id, remove=True)
    assert [i.container_id for i in restarted.list()] == [green.container_id]
    with pytest.raises(ContainerNotFound):
        first.status(blue.container_id)


def test_container_outlives_the_orchestrator_that_started_it(root: Path, stand_in: Path) -> None:
    """Start from another Python process that then exits: the container is no child of ours."""
    spec = make_spec(labels={"pool": "orphaned"})
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from velocity.runtimes import ContainerSpec, ProcessRuntime
        runtime = ProcessRuntime(Path({str(root)!r}),
                                 agent_command=[sys.executable, {str(stand_in)!r}, "serve"])
        print(runtime.start(ContainerSpec.model_validate_json(sys.stdin.read())).container_id)
        """
    )
    started = subprocess.run(
        [sys.executable, "-c", script],
        input=spec.model_dump_json(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    container_id = started.stdout.strip()

    runtime = ProcessRuntime(root)
    read_json(root.resolve() / container_id / "env.json")
    assert runtime.status(container_id).state == "running"
    assert [i.container_id for i in runtime.list({"pool": "orphaned"})] == [container_id]
    runtime.stop(container_id)
    after = runtime.status(container_id)
    assert (after.state, after.exit_code) == ("exited", 0)  # kept by the init, not by us


def test_unknown_container(root: Path) -> None:
    runtime = ProcessRuntime(root)
    for container_id in ["proc-000000000000", "../../etc", "nope"]:
        runtime.stop(container_id)
        runtime.remove(container_id)
        with pytest.raises(ContainerNotFound) as raised:
            runtime.status(container_id)
        assert raised.value.container_id == container_id
        with pytest.raises(ContainerNotFound):
            runtime.logs(container_id)
    assert runtime.list() == []


def test_remove_stops_and_deletes(root: Path, stand_in: Path) -> None:
    runtime = runtime_for(root, stand_in, "serve")
    info = runtime.start(make_spec())
    read_json(root.resolve() / info.container_id / "env.json")
    runtime.remove(info.container_id)
    assert not (root / info.container_id).exists()
    assert runtime.list() == []


def test_get_runtime(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    runtime = get_runtime("process", settings)
    assert isinstance(runtime, ProcessRuntime)
    assert runtime.root == (tmp_path / "home" / "runtimes" / "process").resolve()
    with pytest.raises(UnknownRuntime) as raised:
        get_runtime("nope", settings)
    assert str(raised.value) == "unknown runtime 'nope'; known runtimes: docker, fly, process"


def test_ports_are_chosen_where_no_outgoing_connection_can_take_them(tmp_path, monkeypatch):
    ephemeral_start = int(Path(process.EPHEMERAL_PORT_RANGE_FILE).read_text().split()[0])
    ports = process.free_loopback_ports(3)
    assert len(set(ports)) == 3
    assert all(10000 <= port < ephemeral_start for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: the agent can listen on it

    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("10050\t60999\n")  # no room below the range: ephemeral ports then
    monkeypatch.setattr(process, "EPHEMERAL_PORT_RANGE_FILE", str(range_file))
    assert all(port >= 10050 for port in process.free_loopback_ports(2))
