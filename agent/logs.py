"""Agent logging: lines tagged with project and session, library loggers that leak URLs quieted,
and secrets scrubbed from whatever reaches the handler."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

# httpx logs every request's full URL at INFO, and websockets logs the handshake request
# (which carries the token in the query) at DEBUG: neither may reach the output.
QUIETED = ("httpx", "httpcore", "websockets")
URL_LOGGERS = ("httpx", "websockets.client")
_QUERY = re.compile(r"\?[^\s\"']+")


class AgentLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with `project=… session=…`."""

    def __init__(self, logger: logging.Logger, project_id: str, session_id: str) -> None:
        super().__init__(logger, {})
        self._prefix = f"project={project_id} session={session_id} "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return self._prefix + str(msg), kwargs


class SecretScrubber(logging.Filter):
    """Replaces each secret (the token, a signed URL's query) wherever it appears."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if len(secret) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            for secret in self._secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class QueryScrubber(logging.Filter):
    """Drops every URL query (signatures, `apikey=`) from a library's log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY.sub("?<redacted>", message), None
        return True


def agent_logger(name: str, project_id: str, session_id: str) -> AgentLog:
    return AgentLog(logging.getLogger(name), project_id, session_id)


def quiet_url_loggers() -> None:
    """Raise the URL-logging libraries to WARNING and scrub queries from what they log at
    any level (idempotent; called by the agent and by each module that makes requests)."""
    for name in QUIETED:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QueryScrubber) for f in logger.filters):
            logger.addFilter(QueryScrubber())


def configure_logging(level: str, secrets: Iterable[str]) -> None:
    """One stderr handler on the root logger, scrubbing `secrets`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(SecretScrubber(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    quiet_url_loggers()
