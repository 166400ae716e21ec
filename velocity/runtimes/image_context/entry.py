"""The agent image's entrypoint: the runtime's own settings as arguments, then the agent.

`entry.py [--port N] [--health-port M] [--dev-command CMD]` gives the agent PORT,
HEALTH_PORT, DEV_COMMAND and its fixed paths (PROJECT_DIR under /workspace, HOME in /tmp),
so that the container's own environment holds exactly the contract's five variables.
Standard library only: it runs in the image, beside the agent.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

WORKSPACE = "/workspace"


def main() -> None:
    parser = argparse.ArgumentParser(prog="entry.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5173, help="the dev server's port")
    parser.add_argument("--health-port", type=int, default=5174, help="the agent's /healthz")
    parser.add_argument("--dev-command", help="the dev server's command (default: built-in)")
    args = parser.parse_args()
    os.environ.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME="/tmp",
        LANG="C.UTF-8",
        PROJECT_DIR=f"{WORKSPACE}/project",
        PORT=str(args.port),
        HEALTH_PORT=str(args.health_port),
    )
    if args.dev_command:
        os.environ["DEV_COMMAND"] = args.dev_command
    sys.argv = ["agent"]
    runpy.run_module("agent", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
