"""The init of a process-runtime container: runs the agent, records how it ended, ends the group.

Run as a script (`python -I -S process_init.py CONTAINER_DIR -- COMMAND...`) by ProcessRuntime,
as the leader of the container's own session and process group. It stands between the
orchestrator and the agent so that the agent's exit code is kept on disk even when the
orchestrator that started it is gone, and so that, as in a real container, nothing of the group
outlives the agent. Standard library only; it passes its environment on untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

EXIT_FILE = "exit.json"


def record_exit(container_dir: str, exit_code: int | None) -> None:
    """Write exit.json unless it exists already: the first account of the end wins."""
    final = os.path.join(container_dir, EXIT_FILE)
    temporary = f"{final}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump({"exit_code": exit_code, "finished_at": datetime.now(UTC).isoformat()}, handle)
    try:
        os.link(temporary, final)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)


def exit_code_of(returncode: int) -> int:
    """Shell and Docker convention: 128+N for a process killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: process_init.py CONTAINER_DIR -- COMMAND...")
    container_dir, command = argv[1], argv[3:]
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # keep no socket of the orchestrator's alive
    # The group's SIGTERM reaches the agent directly; the init outlives it to record its end.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    os.chdir(container_dir)
    env = dict(os.environ)
    env.pop("LC_CTYPE", None)  # never ours to pass: only Python's C-locale coercion sets it
    try:
        agent = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    except OSError as error:
        print(f"process runtime: cannot run {command[0]!r}: {error}", file=sys.stderr, flush=True)
        code = 126 if isinstance(error, PermissionError) else 127
    else:
        code = exit_code_of(agent.wait())
    record_exit(container_dir, code)
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(0, signal.SIGKILL)  # the agent's end is the container's end, children included


if __name__ == "__main__":
    main(sys.argv)
