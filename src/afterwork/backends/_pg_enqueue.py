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

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _lifecycle as life
from ..job import Job, JobOwner, JobStatus
from ._pg_rows import ACTIVE_SQL, COLS, load
from ._sqlite_rows import dumps
from .base import NewJob

if TYPE_CHECKING:
    import asyncpg

__all__ = (
    "created",
    "insert_one_statement",
    "insert_statement",
    "needs_transaction",
    "one_params",
    "params",
    "settle",
    "while_sent",
)

T = TypeVar("T")
U = TypeVar("U")


def insert_statement(schema: str, *, conflicts: bool = True) -> str:
    """The one statement that enqueues a batch (``schema`` quoted).

    ``conflicts=False`` leaves out ``ON CONFLICT DO NOTHING`` (each row's speculative
    insertion costs the server about a twentieth of the statement): for a batch without
    keys, whose only conflict is an id already stored, which then fails the whole
    statement (see ``PostgresBackend._insert_on``). Every row is then inserted, so it
    returns one row instead: (how many, the id of the last event).

    It returns the ids of the jobs inserted, each with the id of the last event appended
    (also the payload of the notification: see ``EventPump.poke``).

    Parameters: ``$1``–``$9``, ``$11``–``$13`` and ``$16`` are the batch's columns as arrays,
    ``$10`` the store's now, ``$14`` the events lock's key, ``$15`` the workers' channel.
    A ``NOT NULL`` column whose value is the same for every job may come as one element
    (see :func:`params`); a column of NULLs as an empty array (``unnest`` pads it).
    """
    task, queue, status = (
        _one("task", 2, "text"),
        _one("queue", 3, "text"),
        _one("status", 4, "text"),
    )
    args, kwargs, run_at = (
        _one("args", 5, "text"),
        _one("kwargs", 6, "text"),
        _one("run_at", 11, "float8"),
    )
    priority, max_attempts = _one("priority", 7, "bigint"), _one("max_attempts", 8, "int")
    return f"""
WITH ins AS (
    INSERT INTO {schema}.jobs (id, task, queue, status, args, kwargs, priority, max_attempts,
                               key, created_at, run_at, timeout, result_ttl, headers)
    SELECT n.id, {task}, {queue}, {status}, {args}, {kwargs}, {priority}, {max_attempts},
           n.key, $10::float8, {run_at}, n.timeout, n.result_ttl, n.headers
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::bigint[], $8::int[], $9::text[], $11::float8[], $12::float8[],
                $13::float8[], $16::text[])
         WITH ORDINALITY AS n(id, task, queue, status, args, kwargs, priority, max_attempts,
                              key, run_at, timeout, result_ttl, headers, ord)
    ORDER BY n.ord
    {"ON CONFLICT DO NOTHING" if conflicts else ""}
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
{
        "SELECT ins.id, note.newest FROM ins CROSS JOIN note"
        if conflicts
        else "SELECT (SELECT count(*) FROM ins), note.newest FROM note"
    }"""


@functools.cache
def insert_one_statement(schema: str, *, conflicts: bool = True) -> str:
    """:func:`insert_statement` for exactly one job (``schema`` quoted): its columns as
    scalar parameters (no arrays for the driver to encode, no ``unnest`` on the server),
    the same row, ``enqueued`` event, events lock and notification.

    It returns one row, the id of the event appended (also the notification's payload), if
    the job was inserted, else none (``ON CONFLICT DO NOTHING``: its key is held, or its id
    exists; see :func:`settle`). ``conflicts=False`` leaves ``ON CONFLICT`` out, as
    :func:`insert_statement` does: an id already stored then fails the statement.

    Parameters: ``$1``–``$14`` the row (as :func:`one_params` makes them), ``$15`` the
    events lock's key, ``$16`` the workers' channel. Built once per schema; asyncpg
    prepares it once per connection (its statement cache).
    """
    return f"""
WITH ins AS (
    INSERT INTO {schema}.jobs (id, task, queue, status, args, kwargs, priority, max_attempts,
                               key, created_at, run_at, timeout, result_ttl, headers)
    VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::bigint, $8::int,
            $9::text, $10::float8, $11::float8, $12::float8, $13::float8, $14::text)
    {"ON CONFLICT DO NOTHING" if conflicts else ""}
    RETURNING id, task, queue, status
), lock AS (
    SELECT pg_advisory_xact_lock(hashtext($15::text)) AS held FROM ins
), ev AS (
    INSERT INTO {schema}.events (kind, job_id, task, queue, status, attempts, at)
    SELECT 'enqueued', ins.id, ins.task, ins.queue, ins.status, 0, $10::float8
    FROM ins CROSS JOIN lock
    RETURNING id
)
SELECT ev.id, pg_notify($16::text, ev.id::text) FROM ev"""


def one_params(new: NewJob, now: float) -> tuple[Any, ...]:
    """The parameters ``$1``–``$14`` of :func:`insert_one_statement` for ``new``: the row
    :func:`created` makes of it at ``now``."""
    delay = new.delay
    headers = new.headers
    return (
        new.id,
        new.task,
        new.queue,
        JobStatus.SCHEDULED.value if delay > 0 else JobStatus.QUEUED.value,
        dumps(new.args) if new.args else "[]",
        dumps(new.kwargs) if new.kwargs else "{}",
        new.priority,
        new.max_attempts,
        new.key,
        now,
        now + delay if delay > 0 else now,
        new.timeout,
        new.result_ttl,
        dumps(headers) if headers else None,  # dump_headers
    )


def _one(column: str, number: int, kind: str) -> str:
    """Column ``column`` of the row: the one element of ``$number`` when it has one, so
    that a value every job of the batch shares is sent (and decoded) once."""
    array = f"${number}::{kind}[]"
    return f"CASE WHEN cardinality({array}) = 1 THEN ({array})[1] ELSE n.{column} END"


def created(jobs: Sequence[NewJob], now: float, owner: JobOwner | None = None) -> list[Job]:
    """The jobs ``jobs`` become when created at ``now`` (queued, or scheduled); with
    ``owner``, as an enqueue returns them (``created_now``, attached to ``owner``)."""
    make = life.created_job
    if owner is None:
        return [make(new, now) for new in jobs]
    return [make(new, now, created_now=True, owner=owner) for new in jobs]


def params(jobs: Sequence[NewJob], now: float) -> tuple[list[Any], list[str | None]]:
    """The statement's parameters ``$1``–``$13``, and its ``$16``, for ``jobs``: column by
    column, the rows :func:`created` makes (no job is built for them: the store builds the
    jobs it returns while the statement runs)."""
    if len(jobs) == 1:  # one at a time, the common call: no pass per column
        return _params_of_one(jobs[0], now)
    return _params_of_many(jobs, now)


def _params_of_many(jobs: Sequence[NewJob], now: float) -> tuple[list[Any], list[str | None]]:
    def column(name: str) -> list[Any]:
        return list(map(attrgetter(name), jobs))  # one pass in C

    delays = column("delay")
    queued, scheduled = JobStatus.QUEUED.value, JobStatus.SCHEDULED.value
    # As ``life.create``: scheduled and due after its delay, else queued and due now.
    statuses = [scheduled if delay > 0 else queued for delay in delays]
    run_at = [now + delay if delay > 0 else now for delay in delays]
    args = [dumps(value) if value else "[]" for value in column("args")]
    kwargs = [dumps(value) if value else "{}" for value in column("kwargs")]
    headers = [dumps(value) if value else None for value in column("headers")]  # dump_headers
    columns = [column("id"), _same(column("task")), _same(column("queue")), _same(statuses),
               _same(args), _same(kwargs), _same(column("priority")),
               _same(column("max_attempts")), _nulls(column("key")), now, _same(run_at),
               _nulls(column("timeout")), _nulls(column("result_ttl"))]  # fmt: skip
    return columns, _nulls(headers)


def _params_of_one(new: NewJob, now: float) -> tuple[list[Any], list[str | None]]:
    """:func:`params` of one job (every column has one element, or none for a NULL)."""
    delay = new.delay
    key, timeout, result_ttl = new.key, new.timeout, new.result_ttl
    columns = [[new.id], [new.task], [new.queue],
               [JobStatus.SCHEDULED.value if delay > 0 else JobStatus.QUEUED.value],
               [dumps(new.args) if new.args else "[]"],
               [dumps(new.kwargs) if new.kwargs else "{}"], [new.priority],
               [new.max_attempts], [] if key is None else [key], now,
               [now + delay if delay > 0 else now], [] if timeout is None else [timeout],
               [] if result_ttl is None else [result_ttl]]  # fmt: skip
    return columns, [dumps(new.headers)] if new.headers else []


def _same(column: list[T]) -> list[T]:
    """``column``, or its first element alone if every job has that value (see ``_one``)."""
    return column[:1] if column and column.count(column[0]) == len(column) else column


def _nulls(column: list[T | None]) -> list[T | None]:
    """``column``, or an empty array if it holds only NULLs: ``unnest`` of several arrays
    pads the shorter ones with NULLs (and the driver need not encode a thousand)."""
    return [] if column.count(None) == len(column) else column


async def while_sent(statement: Awaitable[T], work: Callable[[], U]) -> tuple[T, U]:
    """Send ``statement``, and do ``work`` while the server runs it: (its reply, ``work()``).

    A batch's statement keeps the server busy for milliseconds; the jobs the store returns
    are built meanwhile instead of before it (on another core: the client's time per job
    and the server's overlap). The statement's task runs to its first wait (the query is
    written then) before ``work`` starts. Cancelled before the reply, the statement is
    cancelled too and waited for: its connection is never handed back mid-query.
    """
    sent = asyncio.ensure_future(statement)
    try:
        await asyncio.sleep(0)  # the task writes the statement, then waits for the reply
        done = work()
        return await sent, done
    finally:
        if not sent.done():
            sent.cancel()
            await asyncio.wait([sent])
        if not sent.cancelled():
            sent.exception()  # retrieved: it is raised above, or ``work`` failed first


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
