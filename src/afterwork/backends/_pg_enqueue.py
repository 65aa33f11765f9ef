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
    "KEY",
    "MANY",
    "NULL",
    "ONE",
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


#: How a column of a batch comes (see :func:`params`): an array of one value per job, one
#: value every job shares, or NULL for every job.
MANY, ONE, NULL = 0, 1, 2

#: The batch's columns after ``id`` (``created_at`` is the store's now): (name, SQL type).
_COLUMNS = (("task", "text"), ("queue", "text"), ("status", "text"), ("args", "text"),
            ("kwargs", "text"), ("priority", "bigint"), ("max_attempts", "int"),
            ("key", "text"), ("run_at", "float8"), ("timeout", "float8"),
            ("result_ttl", "float8"), ("headers", "text"))  # fmt: skip
#: The index of the keys' column in a shape (see :func:`params`).
KEY = 7


@functools.cache
def insert_statement(schema: str, shape: tuple[int, ...], *, conflicts: bool = True) -> str:
    """The one statement that enqueues a batch (``schema`` quoted) whose columns come as
    ``shape`` says (one of :data:`MANY`, :data:`ONE`, :data:`NULL` per column after ``id``,
    as :func:`params` finds them). Built once per shape; asyncpg prepares it once per
    connection (its statement cache).

    A column every job shares is one scalar parameter and a column of NULLs none at all:
    the driver encodes, and the server decodes, one array (the ids) for a batch of one
    task's jobs, and the row takes those values as constants instead of choosing, per row
    and column, between an array's one element and its row's.

    ``conflicts=False`` leaves out ``ON CONFLICT DO NOTHING`` (each row's speculative
    insertion costs the server about a twentieth of the statement): for a batch without
    keys, whose only conflict is an id already stored, which then fails the whole
    statement (see ``PostgresBackend._insert_on``). Every row is then inserted, so it
    returns one row instead: (how many, the id of the last event).

    It returns the ids of the jobs inserted, each with the id of the last event appended
    (also the payload of the notification: see ``EventPump.poke``).

    Parameters: ``$1`` the ids (an array), ``$2`` the store's now, ``$3`` the events
    lock's key, ``$4`` the workers' channel, then each column that is not :data:`NULL`, in
    order: an array for :data:`MANY`, a scalar for :data:`ONE`.
    """
    values: list[str] = []
    arrays, names = ["$1::text[]"], ["id"]
    number = 4
    for (column, kind), how in zip(_COLUMNS, shape, strict=True):
        if how == NULL:
            values.append(f"NULL::{kind}")
            continue
        number += 1
        if how == ONE:
            values.append(f"${number}::{kind}")
        else:
            values.append(f"n.{column}")
            arrays.append(f"${number}::{kind}[]")
            names.append(column)
    task, queue, status, args, kwargs, priority, max_attempts = values[:7]
    key, run_at, timeout, result_ttl, headers = values[7:]
    return f"""
WITH ins AS (
    INSERT INTO {schema}.jobs (id, task, queue, status, args, kwargs, priority, max_attempts,
                               key, created_at, run_at, timeout, result_ttl, headers)
    SELECT n.id, {task}, {queue}, {status}, {args}, {kwargs}, {priority}, {max_attempts},
           {key}, $2::float8, {run_at}, {timeout}, {result_ttl}, {headers}
    FROM unnest({", ".join(arrays)}) WITH ORDINALITY AS n({", ".join(names)}, ord)
    ORDER BY n.ord
    {"ON CONFLICT DO NOTHING" if conflicts else ""}
    RETURNING seq, id, task, queue, status
), lock AS (
    SELECT pg_advisory_xact_lock(hashtext($3::text)) AS held
    FROM (SELECT count(*) AS inserted FROM ins) AS c
    WHERE c.inserted > 0
), ev AS (
    INSERT INTO {schema}.events (kind, job_id, task, queue, status, attempts, at)
    SELECT 'enqueued', ins.id, ins.task, ins.queue, ins.status, 0, $2::float8
    FROM ins CROSS JOIN lock
    ORDER BY ins.seq
    RETURNING id
), note AS (
    SELECT m.newest, pg_notify($4::text, m.newest::text) AS work
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


def created(jobs: Sequence[NewJob], now: float, owner: JobOwner | None = None) -> list[Job]:
    """The jobs ``jobs`` become when created at ``now`` (queued, or scheduled); with
    ``owner``, as an enqueue returns them (``created_now``, attached to ``owner``)."""
    if owner is None:
        return life.created_jobs(jobs, now)
    return life.created_jobs(jobs, now, created_now=True, owner=owner)


def params(jobs: Sequence[NewJob], now: float) -> tuple[tuple[int, ...], list[Any]]:
    """The shape of ``jobs``' batch (see :func:`insert_statement`) and its parameters after
    ``$4``: column by column, the rows :func:`created` makes (no job is built for them:
    the store builds the jobs it returns while the statement runs)."""

    def column(name: str) -> list[Any]:
        return list(map(attrgetter(name), jobs))  # one pass in C

    # A column of one value stands for every job's (a shared one: see below). The
    # passes in Python run only for the columns that hold something to compute.
    delays = column("delay")
    queued, scheduled = JobStatus.QUEUED.value, JobStatus.SCHEDULED.value
    statuses: list[str] = [queued]
    run_at: list[float] = [now]
    if max(delays) > 0:
        # As ``life.create``: scheduled and due after its delay, else queued and due now.
        statuses = [scheduled if delay > 0 else queued for delay in delays]
        run_at = [now + delay if delay > 0 else now for delay in delays]
    args: list[str] = ["[]"]
    if any(given := column("args")):
        args = [dumps(value) if value else "[]" for value in given]
    kwargs: list[str] = ["{}"]
    if any(given := column("kwargs")):
        kwargs = [dumps(value) if value else "{}" for value in given]
    headers: list[str | None] = [None]
    if any(given := column("headers")):
        headers = [dumps(value) if value else None for value in given]  # dump_headers
    every: tuple[list[Any], ...] = (
        column("task"), column("queue"), statuses, args, kwargs, column("priority"),
        column("max_attempts"), column("key"), run_at, column("timeout"),
        column("result_ttl"), headers,
    )  # fmt: skip
    shape: list[int] = []
    values: list[Any] = []
    for values_of in every:
        first = values_of[0]
        if values_of.count(first) != len(values_of):
            shape.append(MANY)
            values.append(values_of)
        elif first is None:
            shape.append(NULL)
        else:
            shape.append(ONE)
            values.append(first)
    return tuple(shape), values


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
