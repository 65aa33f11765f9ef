"""The PostgreSQL store's write-behind of plain callables' jobs (``WritesBehind.write_local``).

A group of records is one statement (its own transaction, one round trip): the rows as
``start`` then ``finish`` leave them (or ``cancel``, for a running job asked to stop), each
at the times it really started and ended, computed here by :mod:`afterwork._lifecycle`
(``local_changes``); then, under the events lock (see ``_pg_events``), the events of both
in order, for the rows inserted; then one notification with the newest event id, as a
flush of the worker path sends. The rows and events travel as two JSON arrays, read by
``jsonb_populate_recordset`` into the tables' own row types.

All or nothing, and safe to repeat: a row already stored (a repeat after a lost reply) is
left alone (``ON CONFLICT DO NOTHING``), and so are its events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..job import WAITING_STATUSES, Job, JobStatus
from ._pg_host import Host
from ._pg_rows import _pg_column
from ._sqlite_rows import dump_headers, dumps

if TYPE_CHECKING:
    import asyncpg

    from .._engine.writebehind import LocalRecord

__all__ = ("LocalWritesMixin", "local_sql")

T = TypeVar("T")

#: The columns a row is written with (the others keep their defaults; ``seq`` and
#: ``due_ms`` are generated).
_JOB_COLUMNS = (
    "id task queue status args kwargs priority attempts max_attempts recoveries key created_at"
    " run_at started_at finished_at result error progress progress_message timeout result_ttl"
    " worker lease_expires_at cancel_requested timeline"
).split()
_COLUMNS = (*_JOB_COLUMNS, "headers", "token", "lease_ttl", "expires_at")
_EVENT_COLUMNS = "kind job_id task queue status attempts at progress message".split()


def local_sql(schema: str) -> str:
    """The statement: ``$1`` the rows and ``$2`` the events (JSON arrays), ``$3`` the events
    lock's key, ``$4`` the events channel, ``$5`` the workers' channel, ``$6`` the ids of
    the running jobs asked to cancel, ``$7`` the cancel channel."""
    cols = ", ".join(_COLUMNS)
    ev = ", ".join(_EVENT_COLUMNS)
    return f"""
WITH ins AS (
    INSERT INTO {schema}.jobs ({cols})
    SELECT {cols} FROM jsonb_populate_recordset(NULL::{schema}.jobs, $1::text::jsonb)
    ON CONFLICT DO NOTHING
    RETURNING id, status
), lk AS (
    SELECT pg_advisory_xact_lock(hashtext($3::text)) AS held
    FROM (SELECT count(*) AS n FROM ins) AS c WHERE c.n > 0
), ev AS (
    INSERT INTO {schema}.events ({ev})
    SELECT {", ".join(f"r.{name}" for name in _EVENT_COLUMNS)}
    FROM jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS e(v, n)
    CROSS JOIN LATERAL jsonb_populate_record(NULL::{schema}.events, e.v) AS r
    JOIN ins ON ins.id = r.job_id CROSS JOIN lk
    ORDER BY e.n
    RETURNING id
), top AS (SELECT max(id) AS id FROM ev)
SELECT (SELECT count(*) FROM ins) AS written, (SELECT count(*) FROM ev) AS appended,
    top.id AS newest,
    CASE WHEN top.id IS NOT NULL THEN pg_notify($4::text, top.id::text) END AS told,
    CASE WHEN EXISTS (SELECT 1 FROM ins WHERE status IN ('queued', 'scheduled'))
        THEN pg_notify($5::text, '') END AS woke,
    (SELECT count(pg_notify($7::text, a.id)) FROM unnest($6::text[]) AS a(id)
        WHERE a.id IN (SELECT id FROM ins)) AS asked
FROM top"""


def _row(job: Job, token: str, lease_ttl: float) -> dict[str, Any]:
    """The row ``job`` is stored as (as ``Tx.insert`` then ``Tx.save`` leave it)."""
    row = {name: _pg_column(name, getattr(job, name)) for name in _JOB_COLUMNS}
    row["headers"] = dump_headers(job.headers)
    row["token"] = token if job.status is JobStatus.RUNNING else None
    row["lease_ttl"] = lease_ttl
    finished, ttl = job.finished_at, job.result_ttl
    row["expires_at"] = None if finished is None or ttl is None else finished + ttl
    return row


def _event(kind: str, job: Job, at: float, message: str | None = None) -> dict[str, Any]:
    """An event row, as ``Tx.emit`` appends it."""
    values = (kind, job.id, job.task, job.queue, job.status.value, job.attempts, at)
    return {**dict(zip(_EVENT_COLUMNS, values, strict=False)), "progress": job.progress,
            "message": message}  # fmt: skip


class LocalWritesMixin(Host):
    """``write_local`` of :class:`~afterwork.backends.postgres.PostgresBackend`."""

    if TYPE_CHECKING:

        async def _statement(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        def _hold(self, token: str, job: Job) -> None: ...

    async def write_local(self, records: Sequence[LocalRecord]) -> None:
        """Write the jobs run in this process whose rows were kept back (``writebehind``),
        in one statement, each at the times it really started and ended. All or nothing;
        safe to repeat."""
        from .._engine.writebehind import local_changes

        if not records:
            return
        now = self.now()
        rows: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        asked: list[str] = []
        running: list[tuple[str, Job]] = []
        wake = False
        for record in records:
            created, change = local_changes(record, now=now)
            job = created if change is None else change.job
            rows.append(_row(job, record.token, record.lease_ttl))
            events.append(_event("started", created, record.started_at))
            if change is not None and change.event is not None:
                at = now if record.finished_at is None else record.finished_at
                events.append(_event(change.event, job, at, change.message))
                if change.event == "cancel_requested":
                    asked.append(job.id)
            if job.status is JobStatus.RUNNING:
                running.append((record.token, job))
            wake = wake or job.status in WAITING_STATUSES
        sql = local_sql(self._s)
        args = (
            dumps(rows),
            dumps(events),
            f"events:{self.schema}",
            self._channel("events"),
            self._channel("work"),
            asked,
            self._channel("cancel"),
        )

        async def write(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(sql, *args)

        row = await self._statement(write)
        for token, job in running:
            self._hold(token, job)
        if row["newest"] is not None:
            self._pump.poke(int(row["newest"]))
            if trim := self._count_events(int(row["appended"])):
                self._trim_later(trim)
        if wake and row["written"]:
            self._work.notify()
