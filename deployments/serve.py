"""`python -m deployments.serve`: serve every flow of the catalogue from this one process.

The embedded stack's way to run flows without work pools: each catalogue workflow becomes a
deployment of the same name, schedule, concurrency limit and tags as in prefect.yaml, and
runs in a subprocess of this one when triggered (by schedule, the API or the UI).
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.catalogue import WORKFLOWS, Workflow


def runner_deployment(workflow: Workflow) -> RunnerDeployment:
    deployment = workflow.load().to_deployment(
        name=workflow.name,
        cron=workflow.schedule,
        concurrency_limit=workflow.concurrency_limit,
        tags=list(workflow.tags),
    )
    assert isinstance(deployment, RunnerDeployment)  # called outside an event loop: no coroutine
    return deployment


def main() -> None:
    serve(*[runner_deployment(workflow) for workflow in WORKFLOWS])


if __name__ == "__main__":
    main()
