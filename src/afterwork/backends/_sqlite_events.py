"""Job events across processes: an events table, tailed by rowid.

Every transaction that changes a job appends its events to ``afterwork_events``; the
row id is the event's ``id`` (what SSE sends so a client can resume). One pump thread
per backend tails the table while someone is subscribed and fans new rows out to the
in-process subscribers, so ``events()`` in a web process sees what worker processes do.

Latency: a commit in this process wakes the pump at once; commits by other processes are
seen at the next poll, within ``poll_interval`` (0.1 s by default). The table keeps the
last ``retention`` events; older rows are trimmed as new ones are written.

Resuming (``subscribe(since=id)``): the pump's cursor is read and the subscriber registered
under the pump's lock, and the pump publishes under that lock too; the rows after ``id``
up to that cursor are then read from the table on the first ``anext``, and live rows (after
the cursor) follow. Row ids are consecutive (rows are only ever trimmed from the oldest
end), so a missing row after ``id`` means it was trimmed: the stream says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .._notify import Broadcaster, Subscription
from ..job import JobEvent, JobStatus
from ._channels import channel_broadcaster
from .base import TRUNCATED, ChannelMessage, Clock, EventStream, MessageStream, truncated_event

if TYPE_CHECKING:
    import sqlite3

__all__ = ("MESSAGE_KIND", "EventPump")

#: The ``kind`` of the rows that carry channel messages (``aw.publish``), not job events:
#: ``task`` holds the channel, ``message`` the JSON data. Job event readers skip them.
MESSAGE_KIND = "channel-message"

logger: logging.Logger = logging.getLogger(__name__)

_COLUMNS = "id, kind, job_id, task, queue, status, attempts, at, progress, message"
_SELECT = f"SELECT {_COLUMNS} FROM afterwork_events WHERE id > ? ORDER BY id LIMIT 1000"
_SELECT_RANGE = f"SELECT {_COLUMNS} FROM afterwork_events WHERE id > ? AND id <= ? ORDER BY id"


def _event(row: tuple[Any, ...]) -> JobEvent | None:
    (event_id, kind, job_id, task, queue, status, attempts, at, progress, message) = row
    if kind == MESSAGE_KIND:
        return None
    try:
        return JobEvent(
            id=str(event_id),
            kind=str(kind),
            job_id=str(job_id),
            task=str(task),
            queue=str(queue),
            status=JobStatus(status),
            attempts=int(attempts),
            at=float(at),
            progress=None if progress is None else float(progress),
            message=None if message is None else str(message),
        )
    except (TypeError, ValueError):
        logger.warning("skipped a malformed event row %r", event_id)
        return None


class EventPump:
    """Tails ``afterwork_events`` in a daemon thread while anyone is subscribed."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        poll_interval: float = 0.1,
        clock: Clock = time.time,
    ) -> None:
        self._connect = connect
        self._clock = clock
        self.poll_interval = poll_interval
        self._broadcaster: Broadcaster[JobEvent] = Broadcaster(
            lost=lambda: truncated_event(None, self._clock())
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._cursor = 0
        self._closed = True
        self._channels: dict[str, Broadcaster[ChannelMessage]] = {}

    def open(self) -> None:
        with self._lock:
            self._closed = False
            channels = list(self._channels.values())
        self._broadcaster.reopen()
        for channel in channels:
            channel.reopen()

    def _listening(self) -> bool:
        return self._broadcaster.subscriber_count > 0 or any(
            channel.subscriber_count for channel in list(self._channels.values())
        )

    def subscribe_channel(self, channel: str) -> MessageStream:
        """Messages on ``channel`` committed from now on (by any process)."""
        with self._lock:
            closed = self._closed
            if not closed and not self._listening():
                self._cursor = self._max_id()  # from the table's end, not from stale rows
            broadcaster = self._channels.get(channel)
            if broadcaster is None:
                broadcaster = self._channels[channel] = channel_broadcaster(channel)
            stream = broadcaster.subscribe()
            if not closed and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="afterwork-sqlite-events", daemon=True
                )
                self._thread.start()
        if closed:
            broadcaster.close()
        self._wake.set()
        return stream

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join(timeout=5)
        self._broadcaster.close()
        with self._lock:
            conn, self._conn = self._conn, None
            channels = list(self._channels.values())
        for channel in channels:
            channel.close()
        if conn is not None:
            conn.close()

    def poke(self) -> None:
        """A local commit wrote events: deliver them now rather than at the next poll."""
        if self._listening():
            self._wake.set()

    def subscribe(self, since: str | None = None) -> EventStream:
        """Events committed from now on (the cursor is read before this returns).

        With ``since`` (a row id), the rows after it come first, then live ones; if some of
        them were trimmed, a ``truncated`` marker comes first instead, then live ones.
        """
        with self._lock:
            closed = self._closed
            if not closed and not self._listening():
                # Nobody was listening: start from the table's end, not from stale rows.
                self._cursor = self._max_id()
            stream: EventStream
            if since is None or closed:
                stream = self._broadcaster.subscribe()
            else:
                after = int(since) if since.isdigit() else -1
                until = self._cursor
                subscription = self._broadcaster.subscribe(
                    replay=lambda: anyio.to_thread.run_sync(self._read_after, since, after, until)
                )
                # ``since`` may be ahead of this pump (another process read it sooner):
                # the live rows up to it were seen already.
                stream = _After(subscription, after) if after > until else subscription
            if not closed and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="afterwork-sqlite-events", daemon=True
                )
                self._thread.start()
        if closed:
            self._broadcaster.close()
        self._wake.set()
        return stream

    def _read_after(self, since: str, after: int, until: int) -> list[JobEvent]:
        """The events after row ``after`` up to row ``until``, or the truncated marker."""
        conn = self._connect()  # a connection of its own: the pump's belongs to its thread
        try:
            conn.execute("BEGIN")  # one snapshot for every read
            (oldest, newest) = conn.execute(
                "SELECT min(id), max(id) FROM afterwork_events"
            ).fetchone()
            rows = conn.execute(_SELECT_RANGE, (after, until)).fetchall() if after < until else []
            conn.execute("COMMIT")
        finally:
            conn.close()
        if after < 0 or after > (newest or 0):
            return [truncated_event(since, self._clock())]  # not an id of this table
        if after < until and (oldest is None or int(oldest) > after + 1):
            return [truncated_event(since, self._clock())]  # rows after ``since`` were trimmed
        return [event for event in map(_event, rows) if event is not None]

    # -- the pump thread -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _max_id(self) -> int:
        row = self._db().execute("SELECT coalesce(max(id), 0) FROM afterwork_events").fetchone()
        return int(row[0])

    def _run(self) -> None:
        import sqlite3  # here, not at import: PostgreSQL imports this module for its helpers

        while True:
            listening = self._listening()
            self._wake.wait(self.poll_interval if listening else None)
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                if not self._listening():
                    continue
                try:
                    rows = self._db().execute(_SELECT, (self._cursor,)).fetchall()
                except sqlite3.Error:
                    logger.warning("could not read job events", exc_info=True)
                    continue
                if rows and int(rows[0][0]) > self._cursor + 1:
                    # Rows were trimmed before this pump read them: say so, never skip them.
                    self._broadcaster.publish(truncated_event(str(self._cursor), self._clock()))
                if rows:
                    self._cursor = int(rows[-1][0])
                # Published under the lock: a subscriber resuming from the cursor gets each
                # row once, from the table (up to the cursor) or from here (after it).
                for row in rows:
                    if row[1] == MESSAGE_KIND:
                        self._deliver(row)
                        continue
                    event = _event(row)
                    if event is not None:
                        self._broadcaster.publish(event)
            if len(rows) == 1000:
                self._wake.set()  # more are waiting

    def _deliver(self, row: tuple[Any, ...]) -> None:
        channel, data = str(row[3]), row[9]
        broadcaster = self._channels.get(channel)
        if broadcaster is not None and isinstance(data, str):
            broadcaster.publish(ChannelMessage(channel, data))


class _After:
    """A subscription that skips the events up to row ``after`` (already seen elsewhere)."""

    def __init__(self, inner: Subscription[JobEvent], after: int) -> None:
        self._inner = inner
        self._after = after

    def __aiter__(self) -> _After:
        return self

    async def __anext__(self) -> JobEvent:
        while True:
            event = await anext(self._inner)
            if event.kind == TRUNCATED:
                self._after = -1  # ``since`` was no id of this store: skip nothing
            if event.id is None or not event.id.isdigit() or int(event.id) > self._after:
                return event

    async def aclose(self) -> None:
        await self._inner.aclose()
