"""Job events and channel messages across processes on PostgreSQL: an events table, tailed.

Every transaction that changes a job appends its events to ``events`` and sends
``NOTIFY <schema>.events``; one pump task per backend reads the rows after its cursor when
notified (or every ``poll_interval`` when a notification was lost, or ``LISTEN`` is not
available, as behind PgBouncer in transaction mode) and fans them out to the in-process
subscribers. Channel messages (``aw.publish``) are rows of their own kind in the same
table, so they are ordered with the events and share the pump.

Ids are the rows' identity values. Writers take one advisory transaction lock right before
they insert events and hold it to their commit, so ids become visible in increasing order
and a tailer reading ``id > cursor`` never skips a row that commits late. Ids may have gaps
(a rolled-back transaction burns its values), so trimming records how far it went
(``meta.events_trimmed``): a reader whose cursor is behind it is told ``truncated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .._notify import Broadcaster, Notifier
from ..job import JobEvent
from ._channels import channel_broadcaster
from ._sqlite_events import MESSAGE_KIND, _After, _event
from .base import TRUNCATED, ChannelMessage, Clock, EventStream, MessageStream, truncated_event

__all__ = ("MESSAGE_KIND", "EventPump")

logger: logging.Logger = logging.getLogger(__name__)

_BATCH = 1000

#: Reads ``(rows after the cursor, the trim horizon)``.
Fetch = Callable[[int], Awaitable[tuple[list[tuple[Any, ...]], int]]]
#: Reads ``(rows in (after, until], trim horizon, newest id)``.
FetchRange = Callable[[int, int], Awaitable[tuple[list[tuple[Any, ...]], int, int]]]


class EventPump:
    """Tails the events table in a task of the loop that opened the backend."""

    def __init__(
        self,
        fetch: Fetch,
        fetch_range: FetchRange,
        newest: Callable[[], Awaitable[int]],
        *,
        poll_interval: float,
        clock: Clock,
    ) -> None:
        self._fetch = fetch
        self._fetch_range = fetch_range
        self._newest = newest
        self._clock = clock
        self.poll_interval = poll_interval
        self._broadcaster: Broadcaster[JobEvent] = Broadcaster(
            lost=lambda: truncated_event(None, self._clock())
        )
        self._channels: dict[str, Broadcaster[ChannelMessage]] = {}
        self._wake = Notifier()
        self._passed = Notifier()  # the pump finished a read
        self._cursor = 0
        self._hint = 0  # the newest committed id a notification or local commit told of
        self._unknown = True  # a commit of unknown ids came since the last read
        self._hints = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = True

    @property
    def cursor(self) -> int:
        return self._cursor

    def open(self, cursor: int) -> None:
        self._cursor = cursor
        self._closed = False
        self._broadcaster.reopen()
        for channel in self._channels.values():
            channel.reopen()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="afterwork postgres events"
        )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._broadcaster.close()
        for channel in self._channels.values():
            channel.close()

    def poke(self, newest: int | None = None) -> None:
        """Rows were committed (a notification, or a local commit): read them now.

        ``newest``: the highest id those commits wrote, when known. Every lower id has
        committed or never will (ids become visible in order), so while nobody listens the
        cursor moves there without reading the table. A ``newest`` already told of wakes
        nobody: the wake-up of that earlier poke reads up to it (an enqueue pokes with the
        id its own statement returned, then again when its notification comes back).
        """
        with self._hints:
            if newest is None:
                self._unknown = True
            elif newest <= self._hint:
                return
            else:
                self._hint = newest
        self._wake.notify()

    def _listening(self) -> bool:
        return self._broadcaster.subscriber_count > 0 or any(
            channel.subscriber_count for channel in self._channels.values()
        )

    def subscribe(self, since: str | None = None) -> EventStream:
        """Events committed from the pump's cursor on; with ``since``, the kept ones first."""
        if since is None or self._closed:
            stream: EventStream = self._broadcaster.subscribe()
        else:
            after = int(since) if since.isdigit() else -1
            until = self._cursor
            subscription = self._broadcaster.subscribe(
                replay=lambda: self._read_after(since, after, until)
            )
            # ``since`` may be ahead of this pump (another process read it sooner).
            inner = _After(subscription, after) if after > until else subscription
            stream = _Collapsed(inner)
        if self._closed:
            self._broadcaster.close()
        self.poke()
        return stream

    async def subscribe_channel(self, channel: str) -> MessageStream:
        """Messages on ``channel`` committed after this returns (by any process)."""
        broadcaster = self._channels.get(channel)
        if broadcaster is None:
            broadcaster = self._channels[channel] = channel_broadcaster(channel)
        if self._closed:
            stream = broadcaster.subscribe()
            broadcaster.close()
            return stream
        newest = await self._newest()
        # Every row committed before this call is at or below ``newest``: once the pump has
        # passed it, subscribing takes exactly the rows after the cursor.
        while self._cursor < newest and not self._closed:
            ticket = self._passed.ticket()
            self.poke()
            await self._passed.wait(ticket, self.poll_interval)
        return broadcaster.subscribe()

    async def _read_after(self, since: str, after: int, until: int) -> list[JobEvent]:
        """The events after row ``after`` up to row ``until``, or the truncated marker."""
        if after < 0:
            return [truncated_event(since, self._clock())]
        rows, trimmed, newest = await self._fetch_range(after, until)
        if after > max(newest, until) or after < trimmed:
            return [truncated_event(since, self._clock())]
        return [event for event in map(_event, rows) if event is not None]

    async def _run(self) -> None:
        while not self._closed:
            ticket = self._wake.ticket()
            full = False
            try:
                if self._listening():
                    rows, trimmed = await self._fetch(self._cursor)
                    full = len(rows) >= _BATCH
                    self._deliver(rows, trimmed)
                else:
                    with self._hints:
                        unknown, self._unknown = self._unknown, False
                        hint = self._hint
                    newest = await self._newest() if unknown else hint
                    if not self._listening():  # else a subscriber came meanwhile: read on
                        self._cursor = max(self._cursor, newest, hint)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("could not read job events (%s)", exc)
            self._passed.notify()
            if not full and not await self._wake.wait(ticket, self.poll_interval):
                with self._hints:
                    self._unknown = True  # a notification may have been lost: read it

    def _deliver(self, rows: list[tuple[Any, ...]], trimmed: int) -> None:
        # No await in here: a subscriber that reads the cursor sees each row once, from the
        # table (up to the cursor) or from here (after it).
        if trimmed > self._cursor:
            # Rows were trimmed before this pump read them: say so, never skip them.
            self._broadcaster.publish(truncated_event(str(self._cursor), self._clock()))
        for row in rows:
            if row[1] == MESSAGE_KIND:
                broadcaster = self._channels.get(str(row[3]))
                if broadcaster is not None and isinstance(row[9], str):
                    broadcaster.publish(ChannelMessage(str(row[3]), row[9]))
                continue
            event = _event(tuple(row))
            if event is not None:
                self._broadcaster.publish(event)
        if rows:
            self._cursor = max(self._cursor, int(rows[-1][0]))
        elif trimmed > self._cursor:
            self._cursor = trimmed


class _Collapsed:
    """A stream in which a run of ``truncated`` markers reads as one.

    A resumed reader may be told twice of one loss: by its replay (rows after ``since``
    were trimmed) and by the pump (rows after its cursor were trimmed before it read them).
    """

    def __init__(self, inner: EventStream) -> None:
        self._inner = inner
        self._marked = False

    def __aiter__(self) -> _Collapsed:
        return self

    async def __anext__(self) -> JobEvent:
        while True:
            event = await anext(self._inner)
            if event.kind == TRUNCATED:
                if self._marked:
                    continue
                self._marked = True
            else:
                self._marked = False
            return event

    async def aclose(self) -> None:
        await self._inner.aclose()
