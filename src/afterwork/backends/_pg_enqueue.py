"""Enqueue on PostgreSQL in one statement: the job rows, their events and the wake-up.

``BEGIN; INSERT …; INSERT INTO events …; SELECT pg_notify(…); COMMIT`` costs five round
trips per enqueue (and one per job of a batch). :func:`insert_statement` does it all in
one: a ``WITH`` whose first part inserts every job of the batch from arrays (``unnest``),
whose second takes the events lock (see ``_pg_events``) only after that insert ran to its
end (so a writer holding the lock never waits on a job row's unique index), whose third
appends one ``enqueued`` event per inserted job and whose last sends one notification:
on the workers' channel, carrying the id of the last event appended, which also tells
event pumps that rows were appended (one notification instead of two: each costs every
listening session a wake-up). Sent outside a
transaction, the statement is its own transaction: its reply comes after its commit.

A job that was not inserted (``ON CONFLICT DO NOTHING``: its key is held by an unfinished
job, or its id exists) is settled by :func:`settle`: the holder of its key, else the job
with its id. A debounced enqueue meeting a holder needs a row lock and a transition, so
it takes the store's transactional path (``Tx.insert``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import _lifecycle as life
from ..job import Job
from ._pg_rows import ACTIVE_SQL, COLS, load
from ._sqlite_rows import dump_headers, dumps
from .base import NewJob

if TYPE_CHECKING:
    import asyncpg

__all__ = ("created", "insert_statement", "needs_transaction", "params", "settle")


def insert_statement(schema: str) -> str:
    """The one statement that enqueues a batch (``schema`` quoted).

    It returns the ids of the jobs inserted, each with the id of the last event appended
    (also the payload of the notification: see ``EventPump.poke``).

    Parameters: ``$1``–``$9``, ``$11``–``$13`` and ``$16`` are the batch's columns as arrays,
    ``$10`` the store's now, ``$14`` the events lock's key, ``$15`` the workers' channel.
    """
    return f"""
WITH ins AS (
    INSERT INTO {schema}.jobs (id, task, queue, status, args, kwargs, priority, max_attempts,
                               key, created_at, run_at, timeout, result_ttl, headers)
    SELECT n.id, n.task, n.queue, n.status, n.args, n.kwargs, n.priority, n.max_attempts,
           n.key, $10::float8, n.run_at, n.timeout, n.result_ttl, n.headers
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::bigint[], $8::int[], $9::text[], $11::float8[], $12::float8[],
                $13::float8[], $16::text[])
         WITH ORDINALITY AS n(id, task, queue, status, args, kwargs, priority, max_attempts,
                              key, run_at, timeout, result_ttl, headers, ord)
    ORDER BY n.ord
    ON CONFLICT DO NOTHING
    RETURNING seq, id, task, queue, status
), lock AS (
    SELECT pg_advisory_xact_lock(hashtext($14::text)) AS held
    FROM (SELECT count(*) AS inserted FROM ins) AS c
    WHERE c.inserted > 0
), ev AS (
    INSERT INTO {schema}.events (kind, job_id, task, queue, status, attempts, at)
    SELECT 'enqueued', ins.id, ins.task, ins.queue, ins.status, 0, $10::float8
    FROM ins CROSS JOIN lock
    ORDER BY ins.seq
    RETURNING id
), note AS (
    SELECT m.newest, pg_notify($15::text, m.newest::text) AS work
    FROM (SELECT max(id) AS newest FROM ev) AS m CROSS JOIN lock
)
SELECT ins.id, note.newest FROM ins CROSS JOIN note"""


def created(jobs: Sequence[NewJob], now: float) -> list[Job]:
    """The jobs ``jobs`` become when created at ``now`` (queued, or scheduled)."""
    return [life.create(new, now).job for new in jobs]


def params(jobs: Sequence[Job], now: float) -> list[Any]:
    """The statement's parameters ``$1``–``$13`` for ``jobs`` (from :func:`created`)."""
    return [
        [job.id for job in jobs],
        [job.task for job in jobs],
        [job.queue for job in jobs],
        [job.status.value for job in jobs],
        [dumps(job.args) if job.args else "[]" for job in jobs],
        [dumps(job.kwargs) if job.kwargs else "{}" for job in jobs],
        [job.priority for job in jobs],
        [job.max_attempts for job in jobs],
        [job.key for job in jobs],
        now,
        [job.run_at for job in jobs],
        [job.timeout for job in jobs],
        [job.result_ttl for job in jobs],
    ]


def headers(jobs: Sequence[Job]) -> list[str | None]:
    """The statement's ``$16``: each job's headers as stored (JSON, ``NULL`` when empty)."""
    return [dump_headers(job.headers) for job in jobs]


def needs_transaction(jobs: Sequence[NewJob]) -> bool:
    """Whether ``jobs`` holds a debounced enqueue (it may move a key's holder)."""
    return any(new.debounce and new.key is not None for new in jobs)


async def settle(conn: asyncpg.Connection, schema: str, missing: Sequence[Job]) -> list[Job | None]:
    """What each job that was not inserted meets: its key's unfinished holder, else the
    job with its id; ``None`` when neither exists any more (the holder finished meanwhile:
    insert it again)."""
    ids = [job.id for job in missing]
    keys = [job.key for job in missing if job.key is not None]
    rows = await conn.fetch(
        f"SELECT {COLS} FROM {schema}.jobs WHERE id = ANY($1::text[])"
        f" OR (key = ANY($2::text[]) AND status IN {ACTIVE_SQL})",
        ids,
        keys,
    )
    found = [load(tuple(row))[0] for row in rows]
    by_id = {job.id: job for job in found}
    holders = {job.key: job for job in found if job.key is not None and not job.is_finished}
    out: list[Job | None] = []
    for job in missing:
        holder = holders.get(job.key) if job.key is not None else None
        out.append(holder if holder is not None else by_id.get(job.id))
    return out
