"""The preview-container agent: hydrate from a snapshot, then follow the project channel."""

import sys

# httpx imports its command-line client whenever click, rich and pygments are installed, as
# they are beside the service (the process runtime shares its interpreter): ~100 ms of every
# agent's start, for a client the agent never runs. A None entry makes that import fail,
# which httpx expects and handles.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
