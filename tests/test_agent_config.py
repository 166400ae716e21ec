"""`python -m agent` configuration: a clear message naming the variable, and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.snapshot import InvalidSnapshotRef, snapshot_ref_from_reply

REPO = Path(__file__).resolve().parents[1]
DIGEST = "ab" * 32
SNAPSHOT_ID = str(uuid.uuid4())
VALID = {
    "PROJECT_ID": str(uuid.uuid4()),
    "SESSION_ID": str(uuid.uuid4()),
    "SNAPSHOT_URL": f"https://store.example/p/s.zip?expires=9&signature=SIG"
    f"#sha256={DIGEST}&watermark=42&snapshot_id={SNAPSHOT_ID}",
    "REALTIME_URL": "ws://127.0.0.1:9/realtime/v1/websocket",
    "REALTIME_TOKEN": "header.payload.signature-TOKEN",
}


def run_agent(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    minimal = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-m", "agent"],
        env=minimal,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("missing", sorted(VALID))
def test_each_missing_variable_is_named_with_exit_code_2(tmp_path: Path, missing: str) -> None:
    env = {key: value for key, value in VALID.items() if key != missing}
    result = run_agent(env, tmp_path)
    assert result.returncode == 2
    assert missing in result.stderr and "required" in result.stderr
    assert "TOKEN" not in result.stderr.replace("REALTIME_TOKEN", "")  # the value never


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        (
            "SNAPSHOT_URL",
            "ftp://x/s.zip#sha256=" + DIGEST + "&watermark=1&snapshot_id=" + SNAPSHOT_ID,
            "http",
        ),
        ("SNAPSHOT_URL", "https://x/s.zip?signature=SIG", "sha256"),
        (
            "SNAPSHOT_URL",
            f"https://x/s.zip#sha256={DIGEST}&watermark=-1&snapshot_id={SNAPSHOT_ID}",
            "watermark",
        ),
        (
            "SNAPSHOT_URL",
            f"https://x/s.zip#sha256={DIGEST}&watermark=1&snapshot_id=nope",
            "snapshot_id",
        ),
        ("REALTIME_URL", "http://127.0.0.1/realtime/v1/websocket", "ws://"),
        ("PORT", "http", "port"),
        ("PORT", "70000", "port"),
        ("HEALTH_PORT", "-1", "port"),
        ("PROJECT_ID", "has space", "whitespace"),
    ],
)
def test_invalid_variables_are_named_with_exit_code_2(
    tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    result = run_agent({**VALID, variable: value}, tmp_path)
    assert result.returncode == 2
    assert f"{variable}:" in result.stderr and problem in result.stderr
    assert "SIG" not in result.stderr


def test_a_valid_environment_reads_into_a_frozen_config(tmp_path: Path) -> None:
    config = load_config(VALID, cwd=tmp_path)
    assert config.snapshot.url == "https://store.example/p/s.zip?expires=9&signature=SIG"
    assert (config.snapshot.sha256, config.snapshot.watermark) == (DIGEST, 42)
    assert config.snapshot.snapshot_id == SNAPSHOT_ID
    assert config.project_dir == tmp_path / "project" and config.project_dir.is_absolute()
    assert (config.port, config.health_port, config.dev_command) == (5173, 5174, None)
    assert config.topic == f"realtime:project:{VALID['PROJECT_ID']}"
    assert "TOKEN" not in repr(config) and "SIG" not in repr(config)
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_optional_variables(tmp_path: Path) -> None:
    config = load_config(
        {
            **VALID,
            "PORT": "3000",
            "PROJECT_DIR": "work/../app",
            "DEV_COMMAND": "  vite --port $PORT ",
        },
        cwd=tmp_path,
    )
    assert (config.port, config.health_port) == (3000, 3001)
    assert config.project_dir == tmp_path / "app"
    assert config.dev_command == "vite --port $PORT"
    assert load_config({**VALID, "PORT": "0"}, cwd=tmp_path).health_port == 0
    assert load_config({**VALID, "HEALTH_PORT": "9000"}, cwd=tmp_path).health_port == 9000
    with pytest.raises(ConfigError, match="HEALTH_PORT"):
        load_config({**VALID, "PORT": "65535"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="PROJECT_DIR"):
        load_config({**VALID, "PROJECT_DIR": "/"}, cwd=tmp_path)


def test_a_snapshot_reply_becomes_a_ref() -> None:
    reply = {
        "url": "/storage/v1/object/sign/a.zip?signature=s",
        "sha256": DIGEST.upper(),
        "watermark": 57,
        "snapshot_id": SNAPSHOT_ID,
    }
    ref = snapshot_ref_from_reply(reply, "http://gateway:8000/")
    assert ref.url == "http://gateway:8000/storage/v1/object/sign/a.zip?signature=s"
    assert (ref.sha256, ref.watermark) == (DIGEST, 57)
    for broken in (
        {**reply, "url": None},
        {**reply, "watermark": "x"},
        {**reply, "sha256": "12"},
        {**reply, "watermark": True},
    ):
        with pytest.raises(InvalidSnapshotRef):
            snapshot_ref_from_reply(broken, "http://gateway:8000/")
