"""prefect.yaml, rendered from the flow catalogue so names, schedules and limits live in one place.

`python -m deployments.manifest` rewrites prefect.yaml at the repository root;
`--check` exits 1 when the file differs from what the catalogue says;
`--pool docker` renders every deployment onto the velocity-docker pool instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from flows.catalogue import WORKFLOWS, Workflow

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
POOLS = {"process": "velocity-process", "docker": "velocity-docker"}
IMAGE = "velocity-sync:latest"
HEADER = """\
# Generated from flows/catalogue.py by `python -m deployments.manifest`; do not edit by hand.
# Deploy every flow:  prefect deploy --all   (pools and workers: deployments/README.md)
"""


def entrypoint(workflow: Workflow) -> str:
    return f"{workflow.module.replace('.', '/')}.py:{workflow.function}"


def deployment(workflow: Workflow, pool: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": workflow.name,
        "entrypoint": entrypoint(workflow),
        "tags": list(workflow.tags),
        "work_pool": pool_definition(pool),
    }
    if workflow.schedule:
        entry["schedules"] = [{"cron": workflow.schedule, "timezone": "UTC", "active": True}]
    if workflow.concurrency_limit is not None:
        entry["concurrency_limit"] = workflow.concurrency_limit
    return entry


def pool_definition(pool: str) -> dict[str, Any]:
    """A fresh dict each time: YAML would print a shared one as an anchor and aliases."""
    variables: dict[str, Any] = {"image": IMAGE} if pool == "docker" else {}
    return {"name": POOLS[pool], "work_queue_name": "default", "job_variables": variables}


def manifest(pool: str = "process") -> dict[str, Any]:
    return {
        "name": "velocity-sync",
        "prefect-version": "3.8",
        "build": None,
        "push": None,
        # A worker runs flows from a checkout (process pool) or from the image (docker pool,
        # whose job template sets the working directory); VELOCITY_APP_DIR names it.
        "pull": [{"prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $VELOCITY_APP_DIR }}"}}],
        "definitions": {
            "work_pools": {name: pool_definition(name) for name in POOLS},
        },
        "deployments": [deployment(workflow, pool) for workflow in WORKFLOWS],
    }


def render(pool: str = "process") -> str:
    return HEADER + yaml.safe_dump(manifest(pool), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.manifest",
                                     description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if prefect.yaml is not what the catalogue renders")
    parser.add_argument("--pool", choices=sorted(POOLS), default="process")
    parser.add_argument("--output", type=Path, default=PREFECT_YAML)
    args = parser.parse_args(argv)
    text = render(args.pool)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m deployments.manifest",
                  file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
