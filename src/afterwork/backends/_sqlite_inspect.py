"""The SQLite backend's :class:`~afterwork.backends.base.Inspector` and ``Ticks`` halves."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _lifecycle as life
from ..job import JobStatus
from ._sqlite_rows import ACTIVE_SQL, SELECT, TERMINAL_SQL, Tx, load
from .base import Clock, JobFilter, NewJob, QueueStats

if TYPE_CHECKING:
    from ..job import Job
    from ._sqlite_db import Database

__all__ = ("InspectorMixin",)

T = TypeVar("T")

#: How long tick marks are kept (the contract asks for at least a day).
TICK_RETENTION = 7 * 86_400.0


class InspectorMixin:
    """Listing, counting, manual retry, purge and exactly-once ticks."""

    _db: Database
    _clock: Clock

    if TYPE_CHECKING:

        async def _write(self, fn: Callable[[Tx], T]) -> T: ...

    async def list_jobs(self, filter: JobFilter) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        statuses = [JobStatus(s).value for s in filter.statuses]
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        if filter.queue is not None:
            where.append("queue = ?")
            params.append(filter.queue)
        if filter.task is not None:
            where.append("task = ?")
            params.append(filter.task)
        if filter.before is not None:
            where.append("id < ?")
            params.append(filter.before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"{SELECT}{clause} ORDER BY id DESC LIMIT ?"
        params.append(max(filter.limit, 0))
        rows = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return [load(row)[0] for row in rows]

    async def due_or_running(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            (due,) = conn.execute(
                "SELECT count(*) FROM afterwork_jobs WHERE status IN ('queued', 'running')"
                " OR (status = 'scheduled' AND run_at <= ?)",
                (self._clock(),),
            ).fetchone()
            return int(due)

        return await self._db.read(count)

    async def stats(self) -> list[QueueStats]:
        def stats(conn: sqlite3.Connection) -> list[QueueStats]:
            by_queue: dict[str, dict[JobStatus, int]] = {}
            for queue, status, count in conn.execute(
                "SELECT queue, status, count(*) FROM afterwork_jobs GROUP BY queue, status"
            ):
                counts = by_queue.setdefault(queue, dict.fromkeys(JobStatus, 0))
                if status in JobStatus.__members__.values():
                    counts[JobStatus(status)] += count
            oldest = dict(
                conn.execute(
                    "SELECT queue, min(run_at) FROM afterwork_jobs"
                    " WHERE status IN ('queued', 'scheduled') AND run_at <= ? GROUP BY queue",
                    (self._clock(),),
                ).fetchall()
            )
            return [
                QueueStats(queue=name, counts=counts, oldest_waiting_at=oldest.get(name))
                for name, counts in sorted(by_queue.items())
            ]

        return await self._db.read(stats)

    async def retry(self, job_id: str) -> Job | None:
        def retry(tx: Tx) -> Job | None:
            job = tx.get(job_id)
            if job is None:
                return None
            key_free = job.key is None or not tx.select(
                f"key = ? AND status IN {ACTIVE_SQL}", (job.key,)
            )
            change = life.retry(job, now=tx.now, key_free=key_free)
            # ``result`` may be a default standing in for a corrupt value: clear it for real.
            return tx.apply(job, change, force=("result",)) or job

        return await self._write(retry)

    async def purge(self, *, older_than: float | None = None) -> int:
        def purge(tx: Tx) -> int:
            # The set-based form of ``life.purgeable``: ``expires_at`` is the finished
            # time plus ``result_ttl``, written when the job finished.
            conn, now = tx.conn, tx.now
            deleted = conn.execute(
                "DELETE FROM afterwork_jobs WHERE expires_at <= ?", (now,)
            ).rowcount
            if older_than is not None:
                deleted += conn.execute(
                    f"DELETE FROM afterwork_jobs WHERE status IN {TERMINAL_SQL}"
                    " AND finished_at <= ?",
                    (now - older_than,),
                ).rowcount
            # Old tick marks go too, but each schedule keeps its latest (``last_tick``).
            conn.execute(
                "DELETE FROM afterwork_ticks WHERE tick < ? AND tick < "
                "(SELECT max(t.tick) FROM afterwork_ticks t"
                " WHERE t.schedule = afterwork_ticks.schedule)",
                (now - TICK_RETENTION,),
            )
            return int(deleted)

        return await self._write(purge)

    # -- the Ticks protocol ---------------------------------------------------------------

    async def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> Job | None:
        def enqueue_tick(tx: Tx) -> Job | None:
            marked = tx.conn.execute(
                "INSERT INTO afterwork_ticks (schedule, tick, job_id) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (schedule, tick, job.id),
            ).rowcount
            return tx.insert(job) if marked else None

        return await self._write(enqueue_tick)

    async def last_tick(self, schedule: str) -> float | None:
        def last_tick(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT max(tick) FROM afterwork_ticks WHERE schedule = ?", (schedule,)
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._db.read(last_tick)
