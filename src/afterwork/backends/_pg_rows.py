"""Rows of the PostgreSQL store: read into jobs, written back in a transaction.

Rows are decoded by the SQLite store's ``load`` (same columns, same JSON text): one reader
of stored records, lenient on corrupt data. Writes go through :class:`Tx`, which persists
a change decided by :mod:`afterwork._lifecycle` and collects the events, wake-ups and
cancel requests to publish with the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _lifecycle as life
from .._lifecycle import Change
from ..job import WAITING_STATUSES, Job, JobStatus
from ._pg_schema import COLUMNS
from ._sqlite_rows import _column, changed, dump_headers, dumps, load
from .base import NewJob

if TYPE_CHECKING:
    import asyncpg

__all__ = ("COLS", "Tx", "load", "load_one")

logger: logging.Logger = logging.getLogger(__name__)

COLS = ", ".join(COLUMNS)
ACTIVE_SQL = "('scheduled', 'queued', 'running')"
TERMINAL_SQL = "('succeeded', 'failed', 'cancelled')"

_INSERT_COLUMNS = (
    "id, task, queue, status, args, kwargs, priority, attempts, max_attempts, key, created_at,"
    " run_at, started_at, timeout, result_ttl, worker, token, lease_expires_at, lease_ttl,"
    " headers"
)


def load_one(row: Sequence[Any] | None) -> Job | None:
    """The job in ``row`` (leniently decoded), or ``None``."""
    return None if row is None else load(tuple(row))[0]


def _pg_column(name: str, value: Any) -> Any:
    if name == "cancel_requested":
        return bool(value)
    return _column(name, value)


@dataclass
class Tx:
    """One transaction: its connection, its time, and what to publish with its commit."""

    conn: asyncpg.Connection
    now: float
    schema: str
    """The quoted schema name."""
    events: list[tuple[Any, ...]] = field(default_factory=list)
    wake: bool = False
    """Whether a job became due for a worker (workers are notified on commit)."""
    cancels: list[str] = field(default_factory=list)
    """Running jobs someone asked to cancel (their workers are notified on commit)."""

    @property
    def jobs(self) -> str:
        return f"{self.schema}.jobs"

    def emit(self, kind: str, job: Job, message: str | None = None) -> None:
        self.events.append(
            (
                kind,
                job.id,
                job.task,
                job.queue,
                job.status.value,
                job.attempts,
                self.now,
                job.progress,
                message,
            )
        )
        if job.status in WAITING_STATUSES:
            self.wake = True
        if kind == "cancel_requested":
            self.cancels.append(job.id)

    async def select(self, where: str, *params: Any, lock: str = "") -> list[Job]:
        rows = await self.conn.fetch(f"SELECT {COLS} FROM {self.jobs} WHERE {where}{lock}", *params)
        return [load(tuple(row))[0] for row in rows]

    async def get(self, job_id: str, *, lock: bool = True) -> Job | None:
        jobs = await self.select("id = $1", job_id, lock=" FOR UPDATE" if lock else "")
        return jobs[0] if jobs else None

    async def held(self, job_id: str) -> tuple[Job | None, str | None]:
        """The job (locked for this transaction) and the lease token the store holds for it."""
        row = await self.conn.fetchrow(
            f"SELECT {COLS}, token FROM {self.jobs} WHERE id = $1 FOR UPDATE", job_id
        )
        if row is None:
            return None, None
        return load(tuple(row)[: len(COLUMNS)])[0], row["token"]

    async def apply(
        self,
        old: Job,
        change: Change | None,
        *,
        token: str | None = None,
        lease_ttl: float | None = None,
        force: Sequence[str] = (),
    ) -> Job | None:
        """Persist a transition decided by :mod:`afterwork._lifecycle` (``None``: no change)."""
        if change is None:
            return None
        return await self.save(
            old,
            change.job,
            kind=change.event,
            message=change.message,
            token=token,
            lease_ttl=lease_ttl,
            force=force,
        )

    def columns(
        self,
        old: Job,
        new: Job,
        *,
        token: str | None = None,
        lease_ttl: float | None = None,
        force: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The columns in which ``new`` differs from ``old`` (plus ``force``d ones)."""
        columns = {name: _pg_column(name, value) for name, value in changed(old, new, force)}
        if old.status is JobStatus.RUNNING and new.status is not JobStatus.RUNNING:
            columns["token"] = None
        if token is not None:
            columns["token"] = token
        if lease_ttl is not None:
            columns["lease_ttl"] = lease_ttl
        if new.finished_at != old.finished_at or "finished_at" in columns:
            columns["expires_at"] = (
                None
                if new.finished_at is None or new.result_ttl is None
                else new.finished_at + new.result_ttl
            )
        return columns

    async def save(
        self,
        old: Job,
        new: Job,
        *,
        kind: str | None = None,
        message: str | None = None,
        token: str | None = None,
        lease_ttl: float | None = None,
        force: Sequence[str] = (),
    ) -> Job:
        """Write the fields in which ``new`` differs from ``old``; queue its event."""
        columns = self.columns(old, new, token=token, lease_ttl=lease_ttl, force=force)
        if columns:
            assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, 2))
            await self.conn.execute(
                f"UPDATE {self.jobs} SET {assignments} WHERE id = $1", new.id, *columns.values()
            )
        if kind is not None:
            self.emit(kind, new, message)
        return new

    async def insert(
        self,
        new: NewJob,
        *,
        worker: str | None = None,
        token: str | None = None,
        lease_ttl: float = 0.0,
        again: bool = True,
    ) -> Job:
        """Create the job ``new`` describes (already claimed when ``worker`` is given).

        If its key is held by an unfinished job, or its id exists, nothing is written and
        that existing job is returned. A debounced ``new`` meeting an unfinished holder of
        its key goes through ``life.debounce`` (a waiting holder takes its arguments and is
        returned; a running one gives up its key to ``new``).
        """
        if worker is None and new.debounce and new.key is not None:
            holders = await self.select(
                f"key = $1 AND status IN {ACTIVE_SQL}", new.key, lock=" FOR UPDATE"
            )
            if holders:
                moved = life.debounce(holders[0], new, self.now)
                await self.apply(holders[0], moved)
                if moved.job.status is not JobStatus.RUNNING:
                    return moved.job  # pushed back with the new arguments
                # The running holder gave up its key: the new job below takes it.
        if worker is None:
            change = life.create(new, self.now)
        else:
            change = life.start_now(new, worker=worker, now=self.now, lease_ttl=lease_ttl)
        job = change.job
        marks = ", ".join(f"${i}" for i in range(1, 21))
        inserted = await self.conn.fetchval(
            f"INSERT INTO {self.jobs} ({_INSERT_COLUMNS}) VALUES ({marks})"
            " ON CONFLICT DO NOTHING RETURNING true",
            job.id,
            job.task,
            job.queue,
            job.status.value,
            dumps(job.args),
            dumps(job.kwargs),
            job.priority,
            job.attempts,
            job.max_attempts,
            job.key,
            job.created_at,
            job.run_at,
            job.started_at,
            job.timeout,
            job.result_ttl,
            job.worker,
            token,
            job.lease_expires_at,
            lease_ttl if worker is not None else None,
            dump_headers(job.headers),
        )
        if inserted:
            assert change.event is not None
            self.emit(change.event, job)
            return job
        # A conflict: the key is held by an unfinished job, or the id exists.
        if job.key is not None:
            holders = await self.select(f"key = $1 AND status IN {ACTIVE_SQL}", job.key)
            if holders and worker is None and new.debounce and again:
                # A concurrent enqueue created the holder after our look: debounce into it.
                return await self.insert(new, again=False)
            if holders:
                return holders[0]
        existing = await self.get(job.id, lock=False)
        if existing is None:  # pragma: no cover - ON CONFLICT only skips on those two
            raise RuntimeError(f"job {job.id} could not be inserted")
        return existing

    async def quarantine(self, job: Job) -> Job:
        """Fail a claimed job whose record cannot be decoded, instead of running it."""
        change = life.quarantine(job, now=self.now, reason="the stored job record is malformed")
        failed = change.job
        error = failed.error
        assert error is not None
        await self.save(job, failed, kind=change.event, message=change.message, force=("error",))
        logger.error(
            "job %s (%s) quarantined as failed: %s",
            job.id,
            job.task[:200],
            error.message,
            extra={"action": "job_quarantined", "job": {"id": job.id, "task": job.task[:200]}},
        )
        return failed
