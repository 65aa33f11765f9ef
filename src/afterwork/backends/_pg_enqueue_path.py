"""The PostgreSQL store's enqueue path: the group commit of concurrent ``enqueue()``
calls, and ``enqueue_in`` (the ``TransactionalEnqueue`` protocol) through an app's own
connection. The statements themselves are built in :mod:`._pg_enqueue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Sequence
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import asyncpg

from ..exceptions import BackendError, BackendUnavailable, EnqueueError
from ..job import Job
from ._pg_enqueue import (
    KEY,
    NULL,
    created,
    insert_one_statement,
    insert_statement,
    needs_transaction,
    one_params,
    params,
    settle,
    while_sent,
)
from ._pg_host import _RETRIES, _RETRYABLE, Host
from ._pg_psycopg import as_psycopg
from ._pg_rows import Tx
from .base import NewJob

_PendingEnqueue = tuple[Sequence[NewJob], "asyncio.Future[list[Job]]"]
#: The most jobs one grouped enqueue statement takes (a single call is never split).
_ENQUEUE_BATCH = 5000
#: From this many jobs, an enqueue builds the jobs it returns while its statement runs.
_OVERLAP_FROM = 32
#: How long the enqueue path keeps its pool connection after a statement (see
#: ``EnqueueMixin._writer_conn``).
_KEEP_FOR = 0.05


class EnqueueMixin(Host):
    """``enqueue`` and ``enqueue_in`` of :class:`~afterwork.backends.postgres.PostgresBackend`."""

    if TYPE_CHECKING:
        _pool_size: int

        async def _acquire(self, pool: asyncpg.Pool | None) -> asyncpg.Connection: ...

    #: An enqueue finding none being written leads: it writes on its own task if alone.
    _leading: bool = False
    #: The pool connection the enqueue statements keep between them, and its pool.
    _kept: tuple[asyncpg.Pool, Any] | None = None
    _letting_go: asyncio.TimerHandle | None = None
    #: The loop's time when the kept connection was last handed back by a statement.
    _kept_at: float = 0.0
    _giving_back: asyncio.Task[None] | None = None

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Create ``jobs``; enqueues made in the same moment share one statement and commit.

        Each call returns after the commit that holds its jobs; one call's jobs are never
        split across statements (atomic). See :mod:`._pg_enqueue`.

        A call that finds no enqueue being written lets the loop turn end (the calls made
        in that turn queue behind it), then, if none came, writes its jobs on its own task:
        no task to start and no future to resolve, a loop turn less per call one at a
        time. Otherwise, and for the calls that come while a statement runs, one task
        (:meth:`_flush_enqueues`) writes every waiting call in one statement.
        """
        if not jobs:
            return []
        if needs_transaction(jobs):
            return await self._write(partial(_insert_each, jobs))
        loop = asyncio.get_running_loop()
        if not self._leading and not self._flushing():
            self._leading = True
            try:
                await asyncio.sleep(0)  # the calls of this loop turn queue up meanwhile
                if not self._enqueues:  # alone: written here
                    (made,) = await self._insert_now([jobs])
                    return made
                future: asyncio.Future[list[Job]] = loop.create_future()
                self._enqueues.appendleft((jobs, future))  # first come, first written
            finally:
                self._leading = False
                if self._enqueues and not self._flushing():
                    self._enqueuer = loop.create_task(self._flush_enqueues())
            return await future
        future = loop.create_future()
        self._enqueues.append((jobs, future))
        if not self._leading and not self._flushing():
            self._enqueuer = loop.create_task(self._flush_enqueues())
        return await future

    def _flushing(self) -> bool:
        return self._enqueuer is not None and not self._enqueuer.done()

    async def _flush_enqueues(self) -> None:
        """Write the enqueues waiting now in one statement, then those that came meanwhile."""
        while self._enqueues:
            batch = self._take_enqueues()
            try:
                results = await self._insert_now([jobs for jobs, _ in batch])
            except Exception as exc:
                alone = not isinstance(exc, BackendUnavailable) or isinstance(
                    exc.__cause__, asyncpg.DataError
                )
                if len(batch) > 1 and alone:
                    # One caller's bad job must not fail the others: each on its own.
                    for jobs, future in batch:
                        if not future.done():  # else its caller gave up meanwhile
                            await _settle_future(future, self._insert_now([jobs]))
                else:
                    for _, future in batch:
                        _resolve(future, exc)
                continue
            except BaseException:
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                _resolve(future, result)

    def _take_enqueues(self) -> list[_PendingEnqueue]:
        """The waiting enqueues one statement takes (callers that gave up are dropped)."""
        batch: list[_PendingEnqueue] = []
        count = 0
        while self._enqueues and (not batch or count + len(self._enqueues[0][0]) <= _ENQUEUE_BATCH):
            jobs, future = self._enqueues.popleft()
            if not future.done():  # cancelled before the write: not written
                batch.append((jobs, future))
                count += len(jobs)
        return batch

    async def _insert_now(self, groups: Sequence[Sequence[NewJob]]) -> list[list[Job]]:
        """Create the jobs of ``groups`` in one statement (its own transaction)."""
        flat = groups[0] if len(groups) == 1 else [new for jobs in groups for new in jobs]
        for attempt in range(_RETRIES):
            sent = False
            try:
                with self._errors(sent=False):
                    async with self._writer_conn() as conn:
                        sent = True
                        made, newest = await self._insert_on(conn, flat, self.now(), alone=True)
            except BackendUnavailable as exc:
                exc.may_have_applied = sent
                raise
            except BackendError as exc:
                if isinstance(exc.__cause__, _RETRYABLE) and attempt + 1 < _RETRIES:
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                raise
            break
        if newest is not None:
            self._pump.poke(newest)
            self._work.notify()
        if (
            len(groups) == 1 and len(made) == 1 and (job := made[0]) is not None
        ):  # one job, made: the common call
            return [[job]]
        out: list[list[Job]] = []
        start = 0
        for jobs in groups:
            group: list[Job] = []
            for new, job in zip(jobs, made[start : start + len(jobs)], strict=True):
                if job is None:  # its key's holder finished meanwhile: create it after all
                    (job,) = await self._write(partial(_insert_each, [new]))
                group.append(job)
            out.append(group)
            start += len(jobs)
        return out

    async def _insert_on(
        self, conn: asyncpg.Connection, jobs: Sequence[NewJob], now: float, *, alone: bool = False
    ) -> tuple[list[Job | None], int | None]:
        """Insert ``jobs`` on ``conn`` in one statement: (each job or what it met, the id of
        the last event appended, ``None`` if no job was inserted).

        ``None`` stands for a job that met a key holder that finished before it was read.
        ``alone``: the statement is its own transaction (no transaction is open on
        ``conn``), so a batch without keys tries the statement without ``ON CONFLICT``
        first; an id already stored (the retry of an enqueue whose reply was lost) fails
        it whole, and the statement with ``ON CONFLICT`` runs instead.
        """
        if len(jobs) == 1:
            return await self._insert_one_on(conn, jobs[0], now, alone=alone)
        shape, columns = params(jobs, now)
        keyless = alone and shape[KEY] == NULL
        args = (list(map(attrgetter("id"), jobs)), now, f"events:{self.schema}",
                self._channel("work"), *columns)  # fmt: skip
        make = partial(created, jobs, now, self.job_owner)

        async def send(sql: str) -> tuple[list[asyncpg.Record], list[Job]]:
            if len(jobs) < _OVERLAP_FROM:  # few jobs: not worth a task and a loop turn
                return await conn.fetch(sql, *args), make()
            return await while_sent(conn.fetch(sql, *args), make)

        rows: list[asyncpg.Record] | None = None
        if keyless:
            with contextlib.suppress(asyncpg.UniqueViolationError):
                rows, made = await send(insert_statement(self._s, shape, conflicts=False))
        if rows is not None:  # every job was inserted: one row, (how many, newest event)
            out: list[Job | None] = list(made)
            count, newest = int(rows[0][0]), rows[0][1]
        else:
            rows, made = await send(insert_statement(self._s, shape))
            out, count = await self._settle_missing(conn, made, {row[0] for row in rows})
            newest = rows[0][1] if rows else None
        if count and (batch := self._count_events(count)):
            await self._trim_events(conn, batch)
        return out, (None if newest is None else int(newest))

    async def _insert_one_on(
        self, conn: asyncpg.Connection, new: NewJob, now: float, *, alone: bool
    ) -> tuple[list[Job | None], int | None]:
        """:meth:`_insert_on` of one job: its own statement, with scalar parameters
        (:func:`~._pg_enqueue.insert_one_statement`), the same row, event, notification,
        conflicts and errors."""
        args = (*one_params(new, now), f"events:{self.schema}", self._channel("work"))
        newest: int | None = None
        inserted = False
        if alone and new.key is None:  # as a keyless batch: ``ON CONFLICT`` only if needed
            with contextlib.suppress(asyncpg.UniqueViolationError):
                newest = await conn.fetchval(insert_one_statement(self._s, conflicts=False), *args)
                inserted = True
        if not inserted:
            newest = await conn.fetchval(insert_one_statement(self._s), *args)
        (job,) = created((new,), now, self.job_owner)
        if newest is None:  # not inserted: what it met
            (met,) = await settle(conn, self._s, [job])
            return [met], None
        if batch := self._count_events(1):
            await self._trim_events(conn, batch)
        return [job], int(newest)

    async def _settle_missing(
        self, conn: asyncpg.Connection, made: list[Job], inserted: set[str]
    ) -> tuple[list[Job | None], int]:
        """Each of ``made``, or what it met if its id is not in ``inserted``; the count
        inserted."""
        count = len(inserted)
        out: list[Job | None] = []
        missing: list[int] = []
        for index, job in enumerate(made):
            if job.id in inserted:
                inserted.discard(job.id)  # a second job with this id met the first
                out.append(job)
            else:
                out.append(None)
                missing.append(index)
        if missing:
            met = await settle(conn, self._s, [made[i] for i in missing])
            for index, holder in zip(missing, met, strict=True):
                out[index] = holder
        return out, count

    @contextlib.asynccontextmanager
    async def _writer_conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pool connection for an enqueue statement, as ``_conn`` gives, but kept for
        :data:`_KEEP_FOR` after it (unless the pool has one connection only): one enqueue
        after another reuses it, without the pool's acquire and release each time (about
        a fifth of the client's CPU for an enqueue alone). Enqueue statements run one at a
        time (the lone caller's or the group commit's), so one connection serves them.
        A connection that failed is never kept.
        """
        kept, self._kept = self._kept, None  # its timer, if any, lets it be (``_let_go``)
        pool = self._pool
        if kept is not None and (kept[0] is not pool or kept[1].is_closed()):
            await _give_back(*kept)
            kept = None
        if kept is not None:
            conn = kept[1]
        else:
            conn = await self._acquire(pool)
        try:
            yield conn
        except BaseException as exc:
            from .postgres import _UNREACHABLE

            if isinstance(exc, _UNREACHABLE):
                conn.terminate()  # as ``_conn``: its protocol state may be stuck
            await _give_back(pool, conn)
            raise
        if self._pool is pool and self._pool_size > 1 and not conn.is_in_transaction():
            self._kept = (pool, conn)
            loop = asyncio.get_running_loop()
            self._kept_at = loop.time()
            if self._letting_go is None:
                self._letting_go = loop.call_at(self._kept_at + _KEEP_FOR, self._let_go)
        else:
            await _give_back(pool, conn)

    def _let_go(self) -> None:
        """Give the kept connection back to the pool if unused for :data:`_KEEP_FOR` (in a
        task: this is a loop callback), else look again then. One timer for a run of
        enqueues, not one set and cancelled per statement (each left in the loop's heap)."""
        self._letting_go = None
        if self._kept is None:  # in use (its statement sets the timer again), or gone
            return
        loop = asyncio.get_running_loop()
        if (due := self._kept_at + _KEEP_FOR) > loop.time():
            self._letting_go = loop.call_at(due, self._let_go)
            return
        kept, self._kept = self._kept, None
        self._giving_back = loop.create_task(_give_back(*kept))

    async def _give_back_kept(self) -> None:
        """Give the kept connection back now (the store is closing: the pool waits for it)."""
        if self._letting_go is not None:
            self._letting_go.cancel()
            self._letting_go = None
        kept, self._kept = self._kept, None
        if kept is not None:
            await _give_back(*kept)
        giving_back = self._giving_back
        if giving_back is not None:
            with contextlib.suppress(Exception):
                await giving_back

    # -- the TransactionalEnqueue protocol -------------------------------------------------

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
        """Create ``jobs`` in the transaction of ``connection``: an asyncpg connection, a
        psycopg ``AsyncConnection``, or a SQLAlchemy ``AsyncSession`` / ``AsyncConnection``
        on the asyncpg or psycopg driver.

        The rows, their events and the ``NOTIFY`` that wakes workers are all part of that
        transaction: invisible until it commits, gone if it rolls back. The events lock
        (see ``_pg_events``) is held from here to that commit: keep the transaction short.
        """
        conn = await _asyncpg_connection(connection)
        if conn.is_closed():
            raise EnqueueError("the connection given to enqueue is closed")
        if not jobs:
            return []
        with self._errors():
            try:
                found = await conn.fetchval("SELECT to_regclass($1)::text", f"{self._s}.meta")
                store_id = (
                    None
                    if found is None
                    else await conn.fetchval(
                        f"SELECT value FROM {self._s}.meta WHERE name = 'store_id'"
                    )
                )
            except asyncpg.InterfaceError as exc:
                raise EnqueueError(
                    f"the connection given to enqueue cannot be used: {exc}"
                ) from exc
            if store_id is None or store_id != self._store_id:
                raise EnqueueError(
                    "the connection given to enqueue reaches another database than this store's "
                    f"(no afterwork store with this id in schema {self.schema!r})"
                )
            if conn.is_in_transaction():
                created = await self._enqueue_on(conn, jobs)
            else:
                try:
                    async with conn.transaction():
                        created = await self._enqueue_on(conn, jobs)
                except asyncio.CancelledError:
                    # Cancelled mid-way, asyncpg may leave the transaction it began open
                    # (its BEGIN completes after the cancel): end it, so the caller's
                    # connection comes back idle. Outside a transaction it is a no-op.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.execute("ROLLBACK"))
                    raise
        return created

    async def _enqueue_on(self, conn: asyncpg.Connection, jobs: Sequence[NewJob]) -> list[Job]:
        tx = Tx(conn, self.now(), self._s)
        if needs_transaction(jobs):
            made: list[Job | None] = [await tx.insert(new) for new in jobs]
        else:
            made, _ = await self._insert_on(conn, jobs, tx.now)
            for index, job in enumerate(made):
                if job is None:  # its key's holder finished meanwhile: create it after all
                    made[index] = await tx.insert(jobs[index])
        await self._publish(tx)
        return [job for job in made if job is not None]


async def _give_back(pool: asyncpg.Pool | None, conn: Any) -> None:
    if pool is not None:
        with contextlib.suppress(Exception):
            await pool.release(conn)


async def _insert_each(jobs: Sequence[NewJob], tx: Tx) -> list[Job]:
    """Create ``jobs`` one by one in ``tx`` (debounced enqueues move their key's holder)."""
    return [await tx.insert(new) for new in jobs]


async def _settle_future(
    future: asyncio.Future[list[Job]], call: Awaitable[list[list[Job]]]
) -> None:
    """Resolve ``future`` with the one group ``call`` writes, or with its exception."""
    try:
        (result,) = await call
    except Exception as exc:
        _resolve(future, exc)
        return
    _resolve(future, result)


def _resolve(future: asyncio.Future[list[Job]], outcome: list[Job] | BaseException) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def _asyncpg_connection(connection: Any) -> Any:
    """The asyncpg connection behind ``connection`` (or its psycopg one, adapted: see
    ``_pg_psycopg``), inside its transaction."""
    if isinstance(connection, asyncpg.Connection):
        return connection
    psycopg_conn = as_psycopg(connection)
    if psycopg_conn is not None:
        return psycopg_conn
    pooled = getattr(connection, "_con", None)  # an asyncpg pool's proxy
    if isinstance(pooled, asyncpg.Connection):
        return pooled
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # pragma: no cover - SQLAlchemy is optional
        AsyncConnection = AsyncSession = None  # type: ignore[assignment,misc]
    if AsyncSession is not None and isinstance(connection, AsyncSession):
        connection = await connection.connection()  # begins the session's transaction
    if AsyncConnection is not None and isinstance(connection, AsyncConnection):
        if connection.closed or connection.invalidated:
            raise EnqueueError("the connection given to enqueue is closed")
        if connection.dialect.driver not in ("asyncpg", "psycopg"):
            raise EnqueueError(
                "the PostgreSQL store enqueues through SQLAlchemy's asyncpg or psycopg "
                f"driver, not {connection.dialect.driver!r}"
            )
        if not connection.in_transaction():
            await connection.begin()
        # SQLAlchemy's adapters open the driver's transaction on the first statement: run
        # one, so the job rows join that transaction.
        await connection.exec_driver_sql("SELECT 1")
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, asyncpg.Connection):
            return driver
        psycopg_conn = as_psycopg(driver)
        if psycopg_conn is not None:
            return psycopg_conn
    raise EnqueueError(
        "the PostgreSQL store enqueues through an asyncpg connection, a psycopg "
        "AsyncConnection, or a SQLAlchemy AsyncSession/AsyncConnection on asyncpg or psycopg, "
        f"not {type(connection).__name__}"
    )
