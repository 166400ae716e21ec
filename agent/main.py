"""The agent's life: hydrate, start the dev server, follow the channel, report, stop cleanly.

Exit codes: 0 stopped by SIGTERM/SIGINT (or `request_stop`), 1 re-hydration impossible or
an unexpected error, 2 configuration error, 3 the session is over (ended, token refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets

from agent.apply import ApplyFailed, ProjectWriter
from agent.archive import ArchiveRejected
from agent.backoff import Backoff
from agent.channel import ChannelConnection, ChannelLost, InboxOverflow, Message, Refused
from agent.config import EXIT_CONFIG, AgentConfig, ConfigError, load_config
from agent.devserver import DevServer, choose_dev_server
from agent.health import DevServerState, StatusBoard, health_server
from agent.httpserver import BackgroundHTTPServer
from agent.hydrate import (
    HTTP_TIMEOUT,
    DownloadFailed,
    SnapshotTooLarge,
    SnapshotUnavailable,
    hydrate_project,
)
from agent.logs import agent_logger, configure_logging, quiet_url_loggers
from agent.sequence import PART_EVENT, EventSequencer, Gap, Ready, Resync
from agent.snapshot import InvalidSnapshotRef, SnapshotRef, snapshot_ref_from_reply
from agent.staticserver import LiveReload

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SESSION_OVER = 3
# Refusals after which retrying cannot help: the agent's token will never change.
FATAL_REASONS = frozenset(
    {
        "session_ended",
        "token_expired",
        "missing_token",
        "expired",
        "not_yet_valid",
        "bad_signature",
        "malformed",
        "alg_not_allowed",
        "unknown_kid",
        "wrong_audience",
        "wrong_issuer",
        "wrong_role",
        "wrong_topic",
        "not_a_member",
        "unknown_topic",
        "read_only",
    }
)
STEADY_CONNECTION_SECONDS = 30.0
HYDRATION_ERRORS = (
    SnapshotUnavailable,
    SnapshotTooLarge,
    DownloadFailed,
    ArchiveRejected,
    OSError,
)


class SessionOver(Exception):
    """The gateway said this session is finished (`session_ended`, `token_expired`, or a
    join refused for the token): stop, do not retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HydrationFailed(Exception):
    """No usable snapshot after every attempt."""


class Agent:
    """One preview container's agent. `await run()` until `request_stop()` or the end."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.log = agent_logger("agent", config.project_id, config.session_id)
        self.status = StatusBoard()
        self.live_reload = LiveReload()
        self.sequencer = EventSequencer(config.snapshot.watermark, config.max_event_bytes)
        self.dev_server: DevServer | None = None
        self._writer = ProjectWriter(config.project_dir, None, self.log)
        self._health: BackgroundHTTPServer | None = None
        self._client: httpx.AsyncClient | None = None
        self._connection: ChannelConnection | None = None
        self._hydrated = False
        self._rehydrating = False  # not ready until rejoined from the new watermark
        self._reporting = False
        self._stop_requested = asyncio.Event()
        self._status_changed = asyncio.Event()

    @property
    def health_port(self) -> int | None:
        return self._health.port if self._health is not None else None

    @property
    def preview_port(self) -> int | None:
        return self.dev_server.port if self.dev_server is not None else None

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run(self) -> int:
        quiet_url_loggers()
        try:
            self._health = health_server(self.status, self.config.health_port)
        except OSError as error:
            self.log.error("cannot listen on HEALTH_PORT %d: %s", self.config.health_port, error)
            return EXIT_FAILED
        self._health.start()
        self.log.info("agent starting; /healthz on 127.0.0.1:%d", self._health.port)
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=True) as client:
            self._client = client
            self._writer = ProjectWriter(self.config.project_dir, client, self.log)
            life = asyncio.create_task(self._live(), name="agent-life")
            stop = asyncio.create_task(self._stop_requested.wait())
            try:
                await asyncio.wait({life, stop}, return_when=asyncio.FIRST_COMPLETED)
                if life.done():
                    code = life.result()
                else:
                    self.log.info("stop requested")
                    code = EXIT_OK
            except Exception:
                self.log.exception("agent failed")
                code = EXIT_FAILED
            finally:
                stop.cancel()
                await self._shut_down(life)
        self.log.info("agent stopped (exit %d)", code)
        return code

    async def _live(self) -> int:
        if await self._hydrate_from(self.config.snapshot):
            await self._start_dev_server()
        reporter = asyncio.create_task(self._report_status(), name="status-reporter")
        try:
            return await self._follow_channel()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def _shut_down(self, life: asyncio.Task[int]) -> None:
        self.status.update(ready=False)
        if self.dev_server is not None:
            await self.dev_server.stop()
        connection = self._connection
        if connection is not None and connection.joined:
            with contextlib.suppress(ChannelLost, Refused):
                await connection.leave(timeout=2.0)
        life.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await life
        if connection is not None:
            await connection.close()
        self.live_reload.close()
        if self._health is not None:
            await asyncio.to_thread(self._health.stop)

    # --- hydration -------------------------------------------------------------------------

    async def _hydrate_from(self, ref: SnapshotRef) -> bool:
        """Hydrate from `ref`; False (and the error in the status) if it cannot be used."""
        try:
            assert self._client is not None, "run() owns the HTTP client"
            await hydrate_project(
                self._client,
                ref,
                self.config.project_dir,
                max_bytes=self.config.max_snapshot_bytes,
                attempts=self.config.download_attempts,
                backoff=self.config.download_backoff,
                log=self.log,
            )
        except HYDRATION_ERRORS as error:
            self.log.warning("snapshot %s unusable: %s", ref.snapshot_id, error)
            self._fail(f"hydration: {error}")
            return False
        self._hydrated = True
        self.sequencer.reset(ref.watermark)
        hydrations = self.status.current.hydrations + 1
        self.status.update(applied_seq=ref.watermark, hydrations=hydrations, error=None)
        return True

    async def _rehydrate(self, connection: ChannelConnection, reason: str) -> None:
        """Ask the gateway for a fresh snapshot, hydrate, restart the dev server, rejoin."""
        self.log.info("re-hydrating from a fresh snapshot (%s)", reason)
        self._rehydrating = True
        try:
            ref = await self._hydrate_fresh(connection)
            if self.dev_server is None:
                await self._start_dev_server()
            else:
                await self.dev_server.restart()
            self.live_reload.signal()
            response = await connection.rejoin(ref.watermark, self.config.push_timeout)
        finally:
            self._rehydrating = False
        self.log.info(
            "rejoined from watermark %d (head_seq %s)", ref.watermark, _head_seq(response)
        )
        self._refresh_ready()

    async def _hydrate_fresh(self, connection: ChannelConnection) -> SnapshotRef:
        delays = Backoff(self.config.download_backoff)
        for attempt in range(1, self.config.rehydrate_attempts + 1):
            ref = await self._fresh_snapshot(connection)
            if ref is not None and await self._hydrate_from(ref):
                return ref
            if attempt < self.config.rehydrate_attempts:
                await asyncio.sleep(delays.next())
        raise HydrationFailed(self.status.current.error or "no usable snapshot")

    async def _fresh_snapshot(self, connection: ChannelConnection) -> SnapshotRef | None:
        try:
            response = await connection.push("velocity:snapshot", {}, self.config.push_timeout)
            return snapshot_ref_from_reply(response, _http_origin(self.config.realtime_url))
        except Refused as refusal:
            if refusal.reason in FATAL_REASONS:
                raise SessionOver(refusal.reason) from None
            problem = str(refusal)
        except InvalidSnapshotRef as error:
            problem = f"bad velocity:snapshot reply: {error}"
        self.log.warning("%s", problem)
        self._fail(problem)
        return None

    # --- dev server and status ---------------------------------------------------------------

    async def _start_dev_server(self) -> None:
        config = self.config
        self.dev_server = choose_dev_server(
            config.project_dir,
            config.dev_command,
            config.port,
            self.live_reload,
            self._on_dev_state,
            self.log,
            config.restart_backoff,
            config.restart_reset_after,
            config.stop_timeout,
        )
        await self.dev_server.start()

    def _on_dev_state(self, state: DevServerState) -> None:
        self.log.info("dev server %s", state)
        self.status.update(dev_server=state)
        self._refresh_ready()
        self._status_changed.set()

    def _refresh_ready(self) -> None:
        connection, dev = self._connection, self.dev_server
        ready = (
            self._hydrated
            and not self._rehydrating
            and connection is not None
            and connection.joined
            and dev is not None
            and dev.state == "running"
        )
        if ready != self.status.current.ready:
            self.status.update(ready=ready)
            self.log.info("ready" if ready else "not ready")
            self._reporting = self._reporting or ready
            self._status_changed.set()

    def _fail(self, message: str) -> None:
        """Record an error and report it now: provisioning reacts to it (e.g. rebuilds a
        snapshot the agent could not use) and should not wait for the periodic report."""
        self.status.update(error=message)
        self._status_changed.set()

    async def _report_status(self) -> None:
        """Push velocity:status on each change and every status_interval, once ready (or
        failing) — before that there is nothing worth recording."""
        while True:
            # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that arrives once
            # the event is set (gh-86296), and the dev server's "stopped" sets it just before
            # shutdown cancels this task: the agent then never exited on SIGTERM.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.status_interval):
                    await self._status_changed.wait()
            self._status_changed.clear()
            status, connection = self.status.current, self._connection
            if not (self._reporting or status.error) or connection is None:
                continue
            if not connection.joined:
                continue
            try:
                await connection.push(
                    "velocity:status", status.as_payload(), self.config.push_timeout
                )
            except (ChannelLost, Refused) as error:
                self.log.debug("status not recorded: %s", error)

    # --- the channel -------------------------------------------------------------------------

    async def _follow_channel(self) -> int:
        """Connect, join and apply until the session is over; reconnect after any loss."""
        config, loop = self.config, asyncio.get_running_loop()
        delays = Backoff(config.reconnect_backoff)
        while True:
            try:
                connection = await ChannelConnection.open(
                    config.realtime_url,
                    config.realtime_token,
                    config.topic,
                    config.heartbeat_interval,
                    self.log,
                )
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                delay = delays.next()
                self.log.warning(
                    "cannot reach the gateway (%s); retrying in %.2fs", _describe(error), delay
                )
                await asyncio.sleep(delay)
                continue
            self._connection = connection
            opened = loop.time()
            try:
                await self._follow(connection)
            except Refused as refusal:
                if refusal.reason in FATAL_REASONS:
                    return self._session_over(refusal.reason)
                self.log.warning("%s", refusal)
            except SessionOver as over:
                return self._session_over(over.reason)
            except HydrationFailed as failure:
                self.log.error("giving up: no usable snapshot (%s)", failure)
                self._fail(f"hydration failed: {failure}")
                return EXIT_FAILED
            except ChannelLost as lost:
                self.log.info(
                    "channel lost: %s; reconnecting from seq %d", lost, self.sequencer.last_seq
                )
            finally:
                self._connection = None
                self._refresh_ready()
                await connection.close()
            if loop.time() - opened >= STEADY_CONNECTION_SECONDS:
                delays.reset()
            await asyncio.sleep(delays.next())

    def _session_over(self, reason: str) -> int:
        self.log.error("session over: %s; not reconnecting", reason)
        self.status.update(ready=False, error=f"session over: {reason}")
        return EXIT_SESSION_OVER

    async def _follow(self, connection: ChannelConnection) -> None:
        since = self.sequencer.last_seq
        response = await connection.join(since, self.config.push_timeout)
        self.log.info(
            "joined %s since_seq=%d head_seq=%s", connection.topic, since, _head_seq(response)
        )
        if not self._hydrated:
            await self._rehydrate(connection, "the initial snapshot was unusable")
        self._refresh_ready()
        while True:
            try:
                message = await connection.receive()
            except InboxOverflow:
                self.log.warning("inbox overflow: rejoining from seq %d", self.sequencer.last_seq)
                await self._rejoin(connection)
                continue
            await self._on_message(connection, message)

    async def _rejoin(self, connection: ChannelConnection) -> None:
        since = self.sequencer.last_seq
        self.sequencer.reset(since)
        response = await connection.rejoin(since, self.config.push_timeout)
        self.log.info("rejoined since_seq=%d head_seq=%s", since, _head_seq(response))

    async def _on_message(self, connection: ChannelConnection, message: Message) -> None:
        event = message.event
        if event == "broadcast" or event == PART_EVENT:
            kind, payload = _unwrap(message)
            verdict = self.sequencer.offer(kind, payload)
            if isinstance(verdict, Ready):
                await self._apply(connection, verdict)
            elif isinstance(verdict, Gap):
                self.log.info("gap: seq %d after %d", verdict.seq, verdict.last)
                await self._rejoin(connection)
            elif isinstance(verdict, Resync):
                await self._rehydrate(connection, f"seq {verdict.seq}: {verdict.reason}")
        elif event == "system":
            await self._on_system(connection, message.payload)
        elif event in ("phx_close", "phx_error"):
            raise ChannelLost(event)

    async def _apply(self, connection: ChannelConnection, ready: Ready) -> None:
        try:
            outcome = await self._writer.apply(ready.kind, ready.payload)
        except ApplyFailed as failure:
            self.log.error("%s seq=%d not applied: %s", ready.kind, ready.seq, failure)
            self._fail(f"apply: {failure}")
            await self._rehydrate(connection, f"seq {ready.seq} could not be applied")
            return
        self.sequencer.applied(ready.seq)
        lag = lag_ms(ready.payload.get("timestamp"))
        self.status.update(applied_seq=ready.seq, lag_ms=lag, error=None)
        if outcome.changed:
            self.live_reload.signal()
        level = logging.INFO if ready.kind == "bulk:apply" else logging.DEBUG
        self.log.log(
            level,
            "applied %s seq=%d written=%d skipped=%d deleted=%d refused=%d lag_ms=%s",
            ready.kind,
            ready.seq,
            outcome.written,
            outcome.skipped,
            outcome.deleted,
            outcome.refused,
            lag,
        )

    async def _on_system(self, connection: ChannelConnection, payload: object) -> None:
        body: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
        code = body.get("code")
        if code == "resync":
            reason = f"resync: {body.get('reason')}, head_seq {body.get('head_seq')}"
            await self._rehydrate(connection, reason)
        elif code in ("session_ended", "token_expired"):
            raise SessionOver(str(code))
        else:
            self.log.info("system message: %s", body.get("message") or code)


def _unwrap(message: Message) -> tuple[str, object]:
    """(event kind, inner payload) of a broadcast, with the seq from `meta` if missing."""
    payload = message.payload
    if not isinstance(payload, Mapping):
        return message.event, payload
    if payload.get("type") != "broadcast":
        return message.event, payload
    kind, inner = str(payload.get("event")), payload.get("payload")
    meta = payload.get("meta")
    if isinstance(inner, Mapping) and "seq" not in inner and isinstance(meta, Mapping):
        inner = {**inner, "seq": meta.get("seq")}
    return kind, inner


def lag_ms(timestamp: object) -> int | None:
    """Milliseconds from an event's ISO 8601 `timestamp` to now (never negative)."""
    if not isinstance(timestamp, str):
        return None
    try:
        sent = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    return max(0, round((datetime.now(UTC) - sent).total_seconds() * 1000))


def _head_seq(response: Mapping[str, Any]) -> object:
    velocity = response.get("velocity")
    return velocity.get("head_seq") if isinstance(velocity, Mapping) else None


def _http_origin(realtime_url: str) -> str:
    parts = urlsplit(realtime_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/", "", ""))


def _describe(error: BaseException) -> str:
    if isinstance(error, websockets.InvalidURI):
        return "InvalidURI"  # its message would repeat the URL, token included
    return f"{type(error).__name__}: {error}"


def run(config: AgentConfig) -> int:
    """Run the agent in a new event loop until SIGTERM/SIGINT; the exit code."""
    return asyncio.run(_run_until_signalled(config))


async def _run_until_signalled(config: AgentConfig) -> int:
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.request_stop)
    try:
        return await agent.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(environ: Mapping[str, str] | None = None) -> int:
    """`python -m agent`: read the environment, configure logging, run."""
    environ = os.environ if environ is None else environ
    try:
        config = load_config(environ)
    except ConfigError as error:
        print(f"agent: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(
        environ.get("LOG_LEVEL", "INFO"),
        [config.realtime_token, urlsplit(config.snapshot.url).query],
    )
    return run(config)
