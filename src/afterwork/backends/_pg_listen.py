"""The PostgreSQL store's notifications: the ``LISTEN`` connection (work, events and
cancel channels), ``wait_for_work``, and the events and channels read through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from ..exceptions import BackendError
from ._pg_events import MESSAGE_KIND
from ._pg_host import Host
from ._pg_rows import Tx
from .base import EventStream, MessageStream

logger: logging.Logger = logging.getLogger("afterwork.backends.postgres")

_EVENT_COLUMNS = "id, kind, job_id, task, queue, status, attempts, at, progress, message"


class ListenMixin(Host):
    """The notification-driven methods of :class:`~afterwork.backends.postgres.PostgresBackend`."""

    # -- notifications -------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """``LISTEN`` on a connection of its own; reconnect while the server is away."""
        backoff = 0.05
        channels = {
            self._channel("work"): self._work_notified,
            # The payload, when there is one, is the newest event id of that commit.
            self._channel("events"): lambda payload: self._pump.poke(
                int(payload) if payload.isdigit() else None
            ),
            self._channel("cancel"): self._cancelled,
        }
        while self._pool is not None or self._listener is not None:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for channel, handler in channels.items():

                    def relay(*args: Any, handler: Callable[[str], object] = handler) -> None:
                        handler(str(args[3]))

                    await conn.add_listener(channel, relay)
                backoff = 0.05
                self._work.notify()  # anything written while we were away: look again
                self._pump.poke()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("PostgreSQL listener lost its connection (%s); reconnecting", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            self._work.notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _work_notified(self, payload: str) -> None:
        """Jobs are due; an enqueue says so with the id of its last event (see
        ``_pg_enqueue``): its events were appended too, without a notification of their own."""
        self._work.notify()
        if payload.isdigit():
            self._pump.poke(int(payload))

    def _cancelled(self, job_id: str) -> None:
        if self._claiming:
            # It may be a job of that claim, which its worker does not know it holds yet:
            # the claim tells the worker again when it returns (``_redeliver_cancels``).
            self._early_cancels[job_id] = None
        self._deliver_cancel(job_id)

    def _deliver_cancel(self, job_id: str) -> None:
        for callback in list(self._cancel_callbacks):
            try:
                callback(job_id)
            except Exception:
                logger.exception("a cancel callback failed")

    def watch_cancels(self, callback: Callable[[str], object]) -> Callable[[], None]:
        """Call ``callback(job_id)`` when someone asks to cancel a running job."""
        self._cancel_callbacks.append(callback)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._cancel_callbacks.remove(callback)

        return unwatch

    async def _due_in(self, queues: Sequence[str] | None) -> float | None:
        """0 if a job is ready in ``queues``, else seconds until the next delayed one is due."""

        async def due(conn: asyncpg.Connection) -> float | None:
            held = await self._paused(conn)
            names = None if queues is None else [q for q in queues if q not in held]
            if names is not None and not names:
                return None
            where, params = self._ready_where(names, [], held if names is None else [])
            if await conn.fetchval(f"SELECT 1 FROM {self._s}.jobs WHERE {where} LIMIT 1", *params):
                return 0.0
            where = where.replace("status = 'queued'", "status = 'scheduled'", 1)
            at = await conn.fetchval(
                f"SELECT min(run_at) FROM {self._s}.jobs WHERE {where}", *params
            )
            return None if at is None else max(float(at) - self.now(), 0.0)

        return await self._read(due)

    async def _wait_after_claim(self, queues: Sequence[str] | None, wait: float) -> bool:
        """Wait without looking first when the claim just before (for these queues) found
        fewer jobs than it asked for: nothing was due then, and a notification since its
        ticket ends the wait. Until the next delayed job is due, or ``wait`` (a poll);
        ``True``: return to the worker (it may claim), ``False``: look, as usual."""
        after, self._after_claim = self._after_claim, None
        if after is None or after[1] != (None if queues is None else frozenset(queues)):
            return False
        ticket, _, next_due = after
        if next_due is not None:
            wait = min(wait, max(float(next_due) - self.now(), 0.0))
        return wait <= 0 or await self._work.wait(ticket, wait) or self._pool is None

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        """Return when work may be due, or after ``timeout`` seconds.

        A ``NOTIFY`` from any process wakes it at once; without one (lost, or no
        ``LISTEN``) it looks every ``poll_interval``, backing off to ``max_poll_interval``.
        """
        if queues is not None and not queues:
            queues = None
        deadline = time.monotonic() + max(timeout, 0.0)
        interval = self._poll_interval
        if self._flow_skipped:
            # The last claim passed over jobs at a fleet limit: wait for a finish (or a
            # poll, backing off while the limit holds); for a rate limit, until its next
            # start is allowed (or new work comes).
            self._flow_wait = min(self._flow_wait * 2, self._max_poll_interval)
            wait = max(timeout, 0.0)
            if self._conc_skipped or self._rate_next is None:
                wait = min(wait, self._flow_wait)
            if self._rate_next is not None:
                wait = min(wait, max(self._rate_next - self.now(), 0.0))
            await self._work.wait(self._work.ticket(), wait)
            return
        self._flow_wait = self._poll_interval / 2
        if await self._wait_after_claim(queues, min(deadline - time.monotonic(), interval)):
            return
        while True:
            ticket = self._work.ticket()
            try:
                due_in = await self._due_in(queues)
            except BackendError:
                due_in = None  # the server is away: wait, the claim loop will retry
            if due_in is not None and due_in <= 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(remaining, interval)
            if due_in is not None:
                wait = min(wait, due_in)
            if await self._work.wait(ticket, wait) or self._pool is None:
                return
            interval = min(interval * 2, self._max_poll_interval)

    # -- events and channels -------------------------------------------------------------

    async def _fetch_events(self, cursor: int) -> tuple[list[tuple[Any, ...]], int]:
        async def fetch(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                trimmed = await conn.fetchval(
                    f"SELECT value FROM {self._s}.meta WHERE name = 'events_trimmed'"
                )
                rows = await conn.fetch(
                    f"SELECT {_EVENT_COLUMNS} FROM {self._s}.events WHERE id > $1"
                    " ORDER BY id LIMIT 1000",
                    cursor,
                )
            return [tuple(row) for row in rows], int(trimmed or 0)

        return await self._read(fetch)

    async def _fetch_event_range(
        self, after: int, until: int
    ) -> tuple[list[tuple[Any, ...]], int, int]:
        async def fetch(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], int, int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                trimmed = await conn.fetchval(
                    f"SELECT value FROM {self._s}.meta WHERE name = 'events_trimmed'"
                )
                newest = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {self._s}.events")
                rows = (
                    await conn.fetch(
                        f"SELECT {_EVENT_COLUMNS} FROM {self._s}.events"
                        " WHERE id > $1 AND id <= $2 ORDER BY id",
                        after,
                        until,
                    )
                    if after < until
                    else []
                )
            return [tuple(row) for row in rows], int(trimmed or 0), int(newest)

        return await self._read(fetch)

    async def _newest_event(self) -> int:
        async def newest(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {self._s}.events"))

        return await self._read(newest)

    @property
    def event_retention(self) -> int:
        """About how many recent events the events table keeps."""
        return self._event_retention

    def events(self, since: str | None = None) -> EventStream:
        """Events from now on; with ``since`` (an event id), first the kept ones after it.

        If events after ``since`` were trimmed, a ``truncated`` marker comes first instead.
        """
        return self._pump.subscribe(since)

    async def publish(self, channel: str, data: str) -> None:
        """Append the message to the events table: every process's pump delivers it."""
        row = (MESSAGE_KIND, "", channel, "", "queued", 0, self.now(), None, data)

        async def publish(tx: Tx) -> None:
            tx.events.append(row)

        await self._write(publish)

    async def subscribe(self, channel: str) -> MessageStream:
        """Messages on ``channel`` committed from now on, by this or any other process."""
        return await self._pump.subscribe_channel(channel)
