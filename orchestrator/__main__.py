"""`python -m orchestrator` runs the `velocity` CLI."""

from orchestrator.cli import app

app(prog_name="velocity")
