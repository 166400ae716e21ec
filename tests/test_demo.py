"""`velocity demo --json` as a user runs it: the whole stack from nothing, exit 0, ok."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def test_the_demo_runs_end_to_end_and_reports_ok():
    home = Path(tempfile.mkdtemp(prefix="velocity-demo-"))
    os.chmod(home, 0o755)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VELOCITY_", "PREFECT_"))}
    env["VELOCITY_HOME"] = str(home)
    result = subprocess.run([sys.executable, "-m", "orchestrator", "demo", "--json"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{result.stdout}{result.stderr[-3000:]}\nhome: {home}"
    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    assert report["edits"] == 50 and report["files_verified"] == 3
    assert 0 < report["session_start_seconds"] < 60
    assert 0 < report["edit_latency_ms"]["p50"] <= report["edit_latency_ms"]["p99"]
    assert "Error logging to API" not in result.stderr
    stopped = subprocess.run([sys.executable, "-m", "orchestrator", "db", "status"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert stopped.returncode == 1  # the demo stopped the cluster it started
    shutil.rmtree(home)  # kept when the test fails: its logs tell why
