"""The gateway's shared state: one LISTEN connection, one feed per watched project, and the
subscriptions that receive its events in seq order — replayed from any seq, then live.

A notification names only `project_id:seq`. The feed reads the new rows once (content joined
back by events_since), encodes each event once per topic and protocol version, and offers it
to every subscription. A subscription that is behind (a replaying join, or a gap) catches up
by itself, paced by its connection's queue, then switches to live delivery; the check and the
switch happen without an await in between, so no event is skipped or sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from velocity.errors import EventsPruned, from_database_error
from velocity.realtime.auth import Principal
from velocity.realtime.feed import EncodedEvent, RecentEvents, with_download_urls
from velocity.realtime.protocol import Message, Vsn, encode, system_message
from velocity.settings import Settings
from velocity.storage import ObjectStore

log = logging.getLogger("velocity.realtime")

FETCH_BATCH = 500
STATUS_FLUSH_SECONDS = 1.0
FLAG_CACHE_SECONDS = 5.0
CLIENT_BROADCAST_FLAG = "FSYNC_KEEP_CLIENT_BROADCAST"


class Outbox(Protocol):
    """What a subscription needs from its websocket connection."""

    vsn: Vsn
    closed: bool

    def send_now(self, frames: Sequence[str]) -> bool: ...

    async def send_paced(self, frames: Sequence[str]) -> bool: ...

    def end_subscription(self, subscription: Subscription, code: str, message: str) -> None: ...

    def abort(self, reason: str) -> None: ...


@dataclass(eq=False)
class Subscription:
    """One joined channel on one connection."""

    outbox: Outbox
    topic: str
    project_id: UUID
    principal: Principal
    join_ref: str | None
    broadcast_self: bool = False
    delivered: int = 0
    catching_up: bool = False
    suspended: bool = False  # told to resync: nothing more until it rejoins
    expiry: asyncio.TimerHandle | None = None

    def frames(self, event: EncodedEvent) -> tuple[str, ...]:
        return event.frames(self.topic, self.outbox.vsn)


@dataclass(eq=False)
class ProjectFeed:
    project_id: UUID
    head_seq: int | None = None  # highest seq read and offered; None until known
    subscriptions: set[Subscription] = field(default_factory=set)
    recent: RecentEvents = field(default_factory=RecentEvents)
    fetching: bool = False
    pending: bool = False


class Hub:
    def __init__(self, settings: Settings, database_url: str, store: ObjectStore,
                 snapshot_builder: Callable[[UUID], dict[str, Any]] | None = None) -> None:
        self.settings = settings
        self.database_url = database_url
        self.store = store
        self.snapshot_builder = snapshot_builder
        # No per-checkout health query: it would cost a round trip on every fetch. A dead
        # connection fails its query, is discarded by the pool, and the fetch is retried.
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False,
                                        kwargs={"autocommit": True})
        self.feeds: dict[UUID, ProjectFeed] = {}
        self.by_session: dict[UUID, set[Subscription]] = {}
        self._statuses: dict[UUID, dict[str, Any]] = {}
        self._ready_sessions: set[UUID] = set()
        self._flag_cache: dict[UUID, tuple[float, bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.listening = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        self._spawn(self._listen_forever())
        self._spawn(self._flush_statuses_forever())

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_statuses()
        await self.pool.close()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def connected_agents(self) -> int:
        return sum(len(subs) for subs in self.by_session.values())

    # -- subscriptions -------------------------------------------------------------------------
    async def subscribe(self, subscription: Subscription, since_seq: int | None) -> int:
        """Register `subscription`; return the project's head seq. No await happens between
        registration and return, so the caller's join reply precedes every event frame."""
        feed = self.feeds.get(subscription.project_id)
        if feed is None:
            feed = self.feeds[subscription.project_id] = ProjectFeed(subscription.project_id)
        if feed.head_seq is None:
            head = await self._project_head(subscription.project_id)
            if feed.head_seq is None:
                feed.head_seq = head
                self._schedule_fetch(feed)  # anything committed since that read
        head = feed.head_seq
        assert head is not None
        subscription.delivered = head if since_seq is None else since_seq
        feed.subscriptions.add(subscription)
        if subscription.principal.is_container:
            self.by_session.setdefault(subscription.principal.subject, set()).add(subscription)
        return head

    def start_catch_up(self, subscription: Subscription) -> None:
        feed = self.feeds[subscription.project_id]
        if feed.head_seq is not None and subscription.delivered > feed.head_seq:
            self._tell_resync(subscription, "ahead_of_log", feed.head_seq)
        elif feed.head_seq is not None and subscription.delivered < feed.head_seq:
            subscription.catching_up = True
            self._spawn(self._catch_up(subscription))

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.expiry is not None:
            subscription.expiry.cancel()
        feed = self.feeds.get(subscription.project_id)
        if feed is not None:
            feed.subscriptions.discard(subscription)
            if not feed.subscriptions and not feed.fetching:
                del self.feeds[subscription.project_id]
        if subscription.principal.is_container:
            sessions = self.by_session.get(subscription.principal.subject)
            if sessions is not None:
                sessions.discard(subscription)
                if not sessions:
                    del self.by_session[subscription.principal.subject]
                    self._ready_sessions.discard(subscription.principal.subject)

    def subscribers(self, project_id: UUID) -> set[Subscription]:
        feed = self.feeds.get(project_id)
        return set(feed.subscriptions) if feed else set()

    # -- delivery ------------------------------------------------------------------------------
    def _offer(self, subscription: Subscription, event: EncodedEvent) -> None:
        if subscription.catching_up or subscription.suspended or subscription.outbox.closed:
            return
        if event.seq <= subscription.delivered:
            return
        if event.seq > subscription.delivered + 1:
            subscription.catching_up = True
            self._spawn(self._catch_up(subscription))
            return
        if event.too_large:
            self._tell_resync(subscription, "event_too_large", event.seq)
            return
        if subscription.outbox.send_now(subscription.frames(event)):
            subscription.delivered = event.seq

    async def _catch_up(self, subscription: Subscription) -> None:
        """Send every event after `delivered`, paced by the connection, then go live."""
        feed = self.feeds.get(subscription.project_id)
        try:
            while feed is not None and not subscription.outbox.closed:
                if feed.head_seq is not None and subscription.delivered >= feed.head_seq:
                    subscription.catching_up = False  # no await since the check: atomic
                    return
                events = feed.recent.after(subscription.delivered)
                if events is None:
                    events = await self._read_events(subscription.project_id,
                                                     subscription.delivered)
                    if not events:
                        subscription.catching_up = False
                        return
                for event in events:
                    if event.seq != subscription.delivered + 1:
                        break
                    if event.too_large:
                        self._tell_resync(subscription, "event_too_large", event.seq)
                        return
                    if not await subscription.outbox.send_paced(subscription.frames(event)):
                        return
                    subscription.delivered = event.seq
        except EventsPruned:
            self._tell_resync(subscription, "events_pruned",
                              feed.head_seq if feed and feed.head_seq is not None else 0)
        except Exception:  # noqa: BLE001 - never leave a subscription silently stalled
            log.exception("catch-up of project %s failed; closing the socket so the client "
                          "resumes by seq", subscription.project_id)
            subscription.catching_up = False
            subscription.outbox.abort("internal error")

    def _tell_resync(self, subscription: Subscription, reason: str, head_seq: int) -> None:
        subscription.suspended = True
        subscription.catching_up = False
        message = system_message(subscription.topic, "resync",
                                 "re-hydrate from a fresh snapshot, then rejoin",
                                 reason=reason, head_seq=head_seq)
        subscription.outbox.send_now([encode(message, subscription.outbox.vsn)])

    # -- reading the log -----------------------------------------------------------------------
    def notified(self, project_id: UUID, seq: int) -> None:
        feed = self.feeds.get(project_id)
        if feed is None or (feed.head_seq is not None and seq <= feed.head_seq):
            return
        self._schedule_fetch(feed)

    def _schedule_fetch(self, feed: ProjectFeed) -> None:
        if feed.fetching:
            feed.pending = True
            return
        feed.fetching = True
        self._spawn(self._fetch(feed))

    async def _fetch(self, feed: ProjectFeed) -> None:
        try:
            while True:
                feed.pending = False
                assert feed.head_seq is not None
                events = await self._read_events(feed.project_id, feed.head_seq)
                for event in events:
                    if event.seq != feed.head_seq + 1:
                        break
                    feed.head_seq = event.seq
                    feed.recent.add(event)
                    for subscription in list(feed.subscriptions):
                        self._offer(subscription, event)
                if len(events) < FETCH_BATCH and not feed.pending:
                    return
        except (psycopg.Error, OSError, EventsPruned) as error:
            log.warning("reading events of project %s failed: %s", feed.project_id, error)
            self._spawn(self._retry_fetch(feed))
        except Exception:  # noqa: BLE001 - a bug must not stop a project's feed for good
            log.exception("fanning out events of project %s failed", feed.project_id)
            self._spawn(self._retry_fetch(feed))
        finally:
            feed.fetching = False
            if not feed.subscriptions and self.feeds.get(feed.project_id) is feed:
                del self.feeds[feed.project_id]

    async def _retry_fetch(self, feed: ProjectFeed) -> None:
        await asyncio.sleep(0.5)  # back off before asking a failing database again
        if self.feeds.get(feed.project_id) is feed:
            self._schedule_fetch(feed)

    async def _read_events(self, project_id: UUID, after_seq: int) -> list[EncodedEvent]:
        try:
            async with self.pool.connection() as conn:
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(
                    "SELECT seq, type, payload FROM events_since(%s, %s, %s)",
                    (project_id, after_seq, FETCH_BATCH))
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            typed = from_database_error(error)
            if isinstance(typed, EventsPruned):
                raise typed from error
            raise
        ttl = self.settings.snapshot_url_ttl_seconds
        return [EncodedEvent(project_id, row["seq"], row["type"],
                             with_download_urls(row["type"], row["payload"], self.store, ttl),
                             self.settings.realtime_max_frame_bytes,
                             self.settings.realtime_max_event_bytes)
                for row in rows]

    async def _project_head(self, project_id: UUID) -> int:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT last_event_seq FROM projects WHERE id = %s",
                                            (project_id,))).fetchone()
        return int(row[0]) if row else 0

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True) as conn:
                    await conn.execute("LISTEN velocity_file_events")
                    await conn.execute("LISTEN velocity_session_revoked")
                    backoff = 0.1
                    for feed in list(self.feeds.values()):  # whatever was missed meanwhile
                        if feed.head_seq is not None:
                            self._schedule_fetch(feed)
                    self.listening.set()
                    async for note in conn.notifies():
                        self._dispatch(note.channel, note.payload)
            except (psycopg.Error, OSError) as error:
                self.listening.clear()
                log.warning("LISTEN connection lost (%s); reconnecting", error)
                await asyncio.sleep(backoff)  # back off; not a synchronisation
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, channel: str, payload: str) -> None:
        try:
            if channel == "velocity_file_events":
                project, _, seq = payload.partition(":")
                self.notified(UUID(project), int(seq))
            elif channel == "velocity_session_revoked":
                self._spawn(self._check_revoked(UUID(payload)))
        except ValueError:
            log.warning("ignoring malformed notification on %s: %r", channel, payload)

    # -- sessions ------------------------------------------------------------------------------
    async def _check_revoked(self, session_id: UUID) -> None:
        subscriptions = self.by_session.get(session_id)
        if not subscriptions:
            return
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT status, token_jti FROM preview_sessions WHERE id = %s",
                (session_id,))).fetchone()
        live_jti = row[1] if row is not None and row[0] in ("creating", "active") else None
        for subscription in list(subscriptions):
            if live_jti is None or live_jti != subscription.principal.jti:
                subscription.outbox.end_subscription(subscription, "session_ended",
                                                     "the session was stopped")

    def record_status(self, session_id: UUID, status: dict[str, Any]) -> None:
        """Batched into one UPDATE a second; an agent's first `ready` is written at once,
        since provisioning waits on it and a session's start time includes the wait."""
        first_ready = bool(status.get("ready")) and session_id not in self._ready_sessions
        self._statuses[session_id] = status
        if first_ready:
            self._ready_sessions.add(session_id)
            self._spawn(self._flush_statuses())

    async def _flush_statuses_forever(self) -> None:
        while True:
            await asyncio.sleep(STATUS_FLUSH_SECONDS)  # a batching period, not a wait
            try:
                await self._flush_statuses()
            except (psycopg.Error, OSError) as error:
                log.warning("recording agent statuses failed: %s", error)

    async def _flush_statuses(self) -> None:
        if not self._statuses:
            return
        batch, self._statuses = self._statuses, {}
        sessions = list(batch)
        async with self.pool.connection() as conn:
            await conn.execute(
                "SELECT internal.record_agent_status(%s, %s, %s, %s)",
                (sessions, [int(batch[s].get("applied_seq") or 0) for s in sessions],
                 [_lag(batch[s]) for s in sessions], [Jsonb(batch[s]) for s in sessions]))

    # -- requests from clients -----------------------------------------------------------------
    async def client_broadcast_enabled(self, user_id: UUID) -> bool:
        cached = self._flag_cache.get(user_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < FLAG_CACHE_SECONDS:
            return cached[1]
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT is_feature_enabled(%s, %s)",
                                            (CLIENT_BROADCAST_FLAG, user_id))).fetchone()
        enabled = bool(row and row[0])
        self._flag_cache[user_id] = (now, enabled)
        return enabled

    async def snapshot_for(self, project_id: UUID) -> dict[str, Any]:
        """A fresh (or reused) snapshot with a signed URL, built off the event loop."""
        if self.snapshot_builder is None:
            raise RuntimeError("this gateway cannot build snapshots")
        return await asyncio.to_thread(self.snapshot_builder, project_id)

    def relay(self, sender: Subscription, message: Message) -> int:
        """A client broadcast to the project's other user subscriptions; returns how many."""
        sent = 0
        for subscription in self.subscribers(sender.project_id):
            if subscription.principal.is_container or subscription.suspended:
                continue
            if subscription is sender and not sender.broadcast_self:
                continue
            frame = encode(Message(subscription.topic, "broadcast", message.payload),
                           subscription.outbox.vsn)
            sent += subscription.outbox.send_now([frame])
        return sent


def _lag(status: dict[str, Any]) -> int | None:
    value = status.get("lag_ms")
    return int(value) if isinstance(value, int | float) else None
