"""The agent imports only the standard library, httpx and websockets."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import agent

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = (
    "velocity",
    "psycopg",
    "psycopg_pool",
    "prefect",
    "boto3",
    "botocore",
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "jwt",
    "tasks",
    "flows",
    "orchestrator",
)

PROBE = """
import importlib, sys
FORBIDDEN = {forbidden!r}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"the agent must not import {{name}}")
        return None

sys.meta_path.insert(0, Refuse())
for name in FORBIDDEN:
    sys.modules.pop(name, None)
for module in {modules!r}:
    importlib.import_module(module)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
assert not loaded, loaded
print("ok", len({modules!r}))
"""


def agent_modules() -> list[str]:
    names = [f"agent.{info.name}" for info in pkgutil.iter_modules(agent.__path__)]
    return sorted(name for name in names if name != "agent.__main__")


def test_every_agent_module_imports_without_the_platform() -> None:
    modules = agent_modules()
    assert {"agent.main", "agent.apply", "agent.channel", "agent.hydrate"} <= set(modules)
    probe = PROBE.format(forbidden=FORBIDDEN, modules=modules)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(modules)}"


def test_the_refusal_is_real() -> None:
    probe = PROBE.format(forbidden=FORBIDDEN, modules=["velocity.tokens"])
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "must not import velocity" in result.stderr
