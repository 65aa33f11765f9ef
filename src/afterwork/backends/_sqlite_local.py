"""The SQLite store's write-behind of plain callables' jobs (``WritesBehind.write_local``).

A group of records is one transaction: one look for the ids already stored (a group
written again after its commit was not seen), then each row inserted as ``start`` then
``finish`` leave it (or ``cancel``, for a running job asked to stop), computed here by
:mod:`afterwork._lifecycle` (``local_changes``), all in one ``executemany``; and the events
of both, in order, at the times they happened. One statement per row instead of four.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..job import Job, JobStatus
from ._sqlite_rows import Tx, _column, dump_headers

if TYPE_CHECKING:
    from .._engine.writebehind import LocalRecord

__all__ = ("write_local_rows",)

_JOB_COLUMNS = (
    "id task queue status args kwargs priority attempts max_attempts recoveries key created_at"
    " run_at started_at finished_at result error progress progress_message timeout result_ttl"
    " worker lease_expires_at cancel_requested timeline"
).split()
_COLUMNS = (*_JOB_COLUMNS, "headers", "token", "lease_ttl", "expires_at")
_INSERT = (
    f"INSERT INTO afterwork_jobs ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT DO NOTHING"
)


def _row(job: Job, token: str, lease_ttl: float) -> tuple[Any, ...]:
    """The row ``job`` is stored as (as ``Tx.insert`` then ``Tx.save`` leave it)."""
    finished, ttl = job.finished_at, job.result_ttl
    return (
        *(_column(name, getattr(job, name)) for name in _JOB_COLUMNS),
        dump_headers(job.headers),
        token if job.status is JobStatus.RUNNING else None,
        lease_ttl,
        None if finished is None or ttl is None else finished + ttl,
    )


def write_local_rows(tx: Tx, records: Sequence[LocalRecord]) -> None:
    """Insert each record's job as it is now, with the events it had, at its own times."""
    from .._engine.writebehind import local_changes

    ids = [record.new.id for record in records]
    marks = ", ".join("?" for _ in ids)
    stored = {
        row[0]
        for row in tx.conn.execute(
            f"SELECT id FROM afterwork_jobs WHERE id IN ({marks})", ids
        ).fetchall()
    }
    now = tx.now
    rows: list[tuple[Any, ...]] = []
    try:
        for record in records:
            if record.new.id in stored:
                continue  # written by a commit this process did not see
            created, change = local_changes(record, now=now)
            job = created if change is None else change.job
            rows.append(_row(job, record.token, record.lease_ttl))
            tx.now = record.started_at
            tx.emit("started", created)
            if change is not None and change.event is not None:
                tx.now = now if record.finished_at is None else record.finished_at
                tx.emit(change.event, job, change.message)
        if rows:
            tx.conn.executemany(_INSERT, rows)
    finally:
        tx.now = now
