"""Job events across processes: an events table, tailed by rowid.

Every transaction that changes a job appends its events to ``afterwork_events``; the
row id is the event's ``id`` (what SSE sends so a client can resume). One pump thread
per backend tails the table while someone is subscribed and fans new rows out to the
in-process subscribers, so ``events()`` in a web process sees what worker processes do.

Latency: a commit in this process wakes the pump at once; commits by other processes are
seen at the next poll, within ``poll_interval`` (0.1 s by default). The table keeps the
last ``retention`` events; older rows are trimmed as new ones are written.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from .._notify import Broadcaster, Subscription
from ..job import JobEvent, JobStatus

__all__ = ("EventPump",)

logger: logging.Logger = logging.getLogger(__name__)

_SELECT = (
    "SELECT id, kind, job_id, task, queue, status, attempts, at, progress, message"
    " FROM afterwork_events WHERE id > ? ORDER BY id LIMIT 1000"
)


def _event(row: tuple[Any, ...]) -> JobEvent | None:
    (event_id, kind, job_id, task, queue, status, attempts, at, progress, message) = row
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
        self, connect: Callable[[], sqlite3.Connection], *, poll_interval: float = 0.1
    ) -> None:
        self._connect = connect
        self.poll_interval = poll_interval
        self._broadcaster: Broadcaster[JobEvent] = Broadcaster()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._cursor = 0
        self._closed = True

    def open(self) -> None:
        with self._lock:
            self._closed = False
        self._broadcaster.reopen()

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
        if conn is not None:
            conn.close()

    def poke(self) -> None:
        """A local commit wrote events: deliver them now rather than at the next poll."""
        if self._broadcaster.subscriber_count:
            self._wake.set()

    def subscribe(self) -> Subscription[JobEvent]:
        """Events committed from now on (the cursor is read before this returns)."""
        with self._lock:
            closed = self._closed
            if not closed and self._broadcaster.subscriber_count == 0:
                # Nobody was listening: start from the table's end, not from stale rows.
                self._cursor = self._max_id()
            subscription = self._broadcaster.subscribe()
            if not closed and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="afterwork-sqlite-events", daemon=True
                )
                self._thread.start()
        if closed:
            self._broadcaster.close()
        self._wake.set()
        return subscription

    # -- the pump thread -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _max_id(self) -> int:
        row = self._db().execute("SELECT coalesce(max(id), 0) FROM afterwork_events").fetchone()
        return int(row[0])

    def _run(self) -> None:
        while True:
            listening = self._broadcaster.subscriber_count > 0
            self._wake.wait(self.poll_interval if listening else None)
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                if self._broadcaster.subscriber_count == 0:
                    continue
                try:
                    rows = self._db().execute(_SELECT, (self._cursor,)).fetchall()
                except sqlite3.Error:
                    logger.warning("could not read job events", exc_info=True)
                    continue
                if rows:
                    self._cursor = int(rows[-1][0])
            for row in rows:
                event = _event(row)
                if event is not None:
                    self._broadcaster.publish(event)
            if len(rows) == 1000:
                self._wake.set()  # more are waiting
