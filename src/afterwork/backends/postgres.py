"""The PostgreSQL backend: jobs in the database most FastAPI apps already run.

``Afterwork("postgresql://user@host:5432/app")`` (or ``postgres://``) stores jobs here,
on asyncpg (``pip install 'afterwork[postgres]'``). Any number of processes on any number
of hosts may share it:

* it is the fourth user of :mod:`afterwork._lifecycle`: rows are read into jobs, the change
  is computed by the pure transition functions, and written back in one transaction that
  holds the row lock (``SELECT … FOR UPDATE``), fenced by the lease token;
* claims take due rows in ``ready_order`` (priority, due millisecond, id) with
  ``FOR UPDATE SKIP LOCKED``, so concurrent workers never wait on each other's rows;
* ``LISTEN``/``NOTIFY`` wakes idle workers, pushes cancels and feeds the event stream; a
  lost notification (or no ``LISTEN`` at all, behind PgBouncer in transaction mode) only
  costs a bounded poll interval;
* finishes and starts issued together share one transaction (group commit);
* tables live in their own schema (``afterwork``, or ``?schema=``), created and migrated
  on open (see :mod:`._pg_schema`);
* driver errors become :class:`~afterwork.exceptions.BackendError`, and a server that
  cannot be reached (restarting, ``max_connections`` exhausted, pool exhausted)
  :class:`~afterwork.exceptions.BackendUnavailable`, never a hang.

Time is the store's clock: the database server's (measured once on open), or an injected
one. See ``docs/postgres.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .. import _lifecycle as life
from .._notify import Notifier
from ..exceptions import BackendError, BackendUnavailable, ConfigurationError, EnqueueError
from ..job import TERMINAL_STATUSES, Job, JobOwner, JobStatus
from ._pg_batch import Batch, claim_sql, flush_sql, heartbeat_sql
from ._pg_enqueue import (
    created,
    insert_statement,
    needs_transaction,
    params,
    settle,
    while_sent,
)
from ._pg_events import MESSAGE_KIND, EventPump
from ._pg_flow import PgGroups, read_starts, stamp_start
from ._pg_leases import HistoryMixin, LeasesMixin
from ._pg_psycopg import as_psycopg
from ._pg_rows import ACTIVE_SQL, COLS, Tx, load, load_one
from ._pg_schema import SCHEMA_VERSION, check, migrate, not_migrated, quote_schema
from .base import (
    Claim,
    Clock,
    EventStream,
    FlowLimit,
    HeartbeatReply,
    JobFilter,
    Lease,
    MessageStream,
    NewJob,
    Outcome,
    QueueStats,
    RateLimit,
    WorkerInfo,
)

__all__ = ("PostgresBackend",)

logger: logging.Logger = logging.getLogger(__name__)

T = TypeVar("T")

_FINISH_BATCH = 256
_PURGE_BATCH = 500
#: Events are trimmed every this many written (at most twice as many deleted at once).
_EVENT_TRIM_STEP = 1000
_RETRIES = 5
#: How long tick marks are kept (the contract asks for at least a day).
TICK_RETENTION = 7 * 86_400.0

#: A begin (no outcome) or a finish waiting for the next group commit.
_Pending = tuple[Lease, Outcome | None, "asyncio.Future[Any]"]
#: Most leases remembered for set-based finishes (beyond: the per-row path, same result).
_HELD_MAX = 100_000
_PendingEnqueue = tuple[Sequence[NewJob], "asyncio.Future[list[Job]]"]
#: The most jobs one grouped enqueue statement takes (a single call is never split).
_ENQUEUE_BATCH = 5000

_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)
_RETRYABLE = (asyncpg.exceptions.TransactionRollbackError,)
#: From this many jobs, an enqueue builds the jobs it returns while its statement runs.
_OVERLAP_FROM = 32

_EVENT_COLUMNS = "id, kind, job_id, task, queue, status, attempts, at, progress, message"

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "pool_size": int,
    "min_pool_size": int,
    "connect_timeout": float,
    "acquire_timeout": float,
    "poll_interval": float,
    "max_poll_interval": float,
    "event_poll_interval": float,
    "event_retention": int,
    "migrate": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "listen": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "statement_cache_size": int,
    "finish_retry_for": float,
}


class _Failed(Exception):
    """Raised inside ``_transaction`` to remember whether the commit was sent."""


class PostgresBackend(LeasesMixin, HistoryMixin):
    """Jobs in PostgreSQL (asyncpg), shared by every process that reaches the database.

    Args:
        dsn: ``postgresql://user:password@host:port/database`` (options asyncpg reads,
            such as ``sslmode``, may stay in the query).
        clock: seconds since the epoch; ``None`` uses the database server's clock.
        schema: the schema holding afterwork's tables (created if missing).
        pool_size: most connections this process opens (plus one for ``LISTEN``).
        min_pool_size: connections kept open while idle.
        connect_timeout: seconds to wait for a new connection.
        acquire_timeout: seconds to wait for a free pooled connection before
            :class:`~afterwork.exceptions.BackendUnavailable` is raised.
        poll_interval: first interval at which an idle worker looks for work when no
            notification came; doubles up to ``max_poll_interval``.
        max_poll_interval: the longest interval between those looks (the most a lost
            notification costs).
        event_poll_interval: how often the events table is read when no notification came.
        event_retention: about how many recent events are kept for ``events(since=)``.
        migrate: create or migrate the schema on open (``False``: refuse a store that is
            not at this version; run ``afterwork db migrate`` as a deploy step).
        listen: use ``LISTEN``/``NOTIFY`` (``False``: poll only, as PgBouncer in
            transaction mode needs). ``None``: on, unless a pooler is detected on open.
        statement_cache_size: asyncpg's prepared statement cache (0 behind PgBouncer in
            transaction mode). ``None``: 100, or 0 when a pooler is detected on open.
        finish_retry_for: how long recording outcomes and starts is retried while the
            server cannot be reached (safe: fenced by the lease token).

    Example:
        ```python
        aw = Afterwork("postgresql://app@db.internal/app?schema=jobs&pool_size=20")
        ```
    """

    def __init__(
        self,
        dsn: str,
        *,
        clock: Clock | None = None,
        schema: str = "afterwork",
        pool_size: int = 10,
        min_pool_size: int = 1,
        connect_timeout: float = 5.0,
        acquire_timeout: float = 10.0,
        poll_interval: float = 0.1,
        max_poll_interval: float = 1.0,
        event_poll_interval: float = 1.0,
        event_retention: int = 10_000,
        migrate: bool = True,
        listen: bool | None = None,
        statement_cache_size: int | None = None,
        finish_retry_for: float = 30.0,
    ) -> None:
        self.schema: str = schema
        self._s = quote_schema(schema)
        if pool_size < 1 or min_pool_size < 0 or min_pool_size > pool_size:
            raise ConfigurationError("pool_size must be >= 1 and >= min_pool_size >= 0")
        if min(connect_timeout, acquire_timeout, poll_interval, max_poll_interval) <= 0:
            raise ConfigurationError("PostgreSQL timeouts and intervals must be positive")
        if event_poll_interval <= 0:
            raise ConfigurationError("event_poll_interval must be positive")
        if event_retention < 1:
            raise ConfigurationError("event_retention must be at least 1")
        self.dsn: str = dsn
        self._clock = clock
        self._offset = 0.0  # the server's clock minus this host's
        self._pool_size = pool_size
        self._min_pool_size = min_pool_size
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self._poll_interval = poll_interval
        self._max_poll_interval = max(max_poll_interval, poll_interval)
        self._event_retention = event_retention
        self._events_written = 0
        self.migrate_on_open: bool = migrate
        self._listen = listen
        self._statement_cache_size = statement_cache_size
        self._finish_retry_for = finish_retry_for
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._cancel_callbacks: list[Callable[[str], object]] = []
        self._work = Notifier()
        self._flow_skipped = False
        self._conc_skipped = False
        self._rate_next: float | None = None  # when a job passed over for a rate may start
        self._flow_wait = poll_interval / 2
        self._finishes: list[_Pending] = []
        self._held: dict[str, tuple[str, Job]] = {}
        """Job id → (token, the job as this process last wrote it) for the leases it holds."""
        self._trimming: asyncio.Task[None] | None = None
        self._trim_owed = 0  # events to trim, owed to ``_trim_later``
        self._finisher: asyncio.Task[None] | None = None
        #: Whether the server connection differs from the one the client was handed (a
        #: pooler such as PgBouncer sits in between): known once open.
        self.behind_pooler: bool = False
        self._enqueues: deque[_PendingEnqueue] = deque()
        #: What the jobs ``enqueue`` creates are attached to (the ``Afterwork`` that opened
        #: this store sets it): it then returns them as its caller would (``created_now``,
        #: bound), made while the statement runs, instead of copied after it.
        self.job_owner: JobOwner | None = None
        self._enqueuer: asyncio.Task[None] | None = None
        self._insert_sql = insert_statement(self._s)
        self._insert_new_sql = insert_statement(self._s, conflicts=False)
        self._pump = EventPump(
            self._fetch_events,
            self._fetch_event_range,
            self._newest_event,
            poll_interval=event_poll_interval,
            clock=self.now,
        )
        self.channel_prefix: str = f"afterwork.{schema}"
        self._store_id: str | None = None

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None, **options: Any) -> PostgresBackend:
        """``postgresql://…`` or ``postgres://…``; afterwork's query options become keywords.

        E.g. ``?schema=jobs&pool_size=20&migrate=false``; other query options go to asyncpg.
        """
        parts = urlsplit(url)
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            parse = _OPTIONS.get(name)
            if parse is None:
                rest.append((name, value))
                continue
            try:
                options.setdefault(name, parse(value))
            except ValueError:
                raise ConfigurationError(f"bad value for {name!r} in the PostgreSQL URL") from None
        dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(dsn, clock=clock, **options)

    def __repr__(self) -> str:
        return f"PostgresBackend(schema={self.schema!r})"

    # -- lifecycle -----------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return time.time() + self._offset

    async def _connect(self) -> asyncpg.Connection:
        with self._errors(sent=False):
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn,
                timeout=self._connect_timeout,
                statement_cache_size=self._statement_cache_size or 0,
            )
        return conn

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            conn = await self._connect()
            try:
                with self._errors(sent=False):
                    before = time.time()
                    server, pid = await conn.fetchrow(
                        "SELECT extract(epoch FROM clock_timestamp()), pg_backend_pid()"
                    )
                    self._offset = float(server) - (before + time.time()) / 2
                    self._detect_pooler(conn.get_server_pid() != pid)
                    if self.migrate_on_open:
                        await migrate(conn, self.schema)
                    else:
                        version = await check(conn, self.schema)
                        if version != SCHEMA_VERSION:
                            raise not_migrated(self.schema, version)
                    self._store_id, cursor = await conn.fetchrow(
                        f"SELECT (SELECT value FROM {self._s}.meta WHERE name = 'store_id'),"
                        f" (SELECT coalesce(max(id), 0) FROM {self._s}.events)"
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
            # The checking connection closes while the pool connects: the pool's first
            # connection is what the first claim waits for, not this one's goodbye.
            closing = asyncio.ensure_future(_close_quietly(conn))
            try:
                with self._errors(sent=False):
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=self._min_pool_size,
                        max_size=self._pool_size,
                        timeout=self._connect_timeout,
                        statement_cache_size=self._statement_cache_size,
                        reset=_reset,
                    )
            finally:
                await closing
        except BaseException:
            await self.aclose()
            raise
        self._pump.open(int(cursor))
        if self._listen:
            self._listener = asyncio.get_running_loop().create_task(
                self._listen_loop(), name="afterwork postgres listener"
            )

    def _detect_pooler(self, pooled: bool) -> None:
        """Behind a pooler (PgBouncer hands out its own backend pid), unless configured:
        no prepared statement cache and no ``LISTEN`` (both need one server session)."""
        self.behind_pooler = pooled
        if self._statement_cache_size is None:
            self._statement_cache_size = 0 if pooled else 100
        if self._listen is None:
            self._listen = not pooled
            if pooled:
                logger.info(
                    "PostgreSQL is reached through a connection pooler: wake-ups poll every "
                    "%.3gs at most (max_poll_interval; ?listen=true for session pooling)",
                    self._max_poll_interval,
                )

    async def migrate(self) -> tuple[int, int]:
        """Create or migrate the schema now (``afterwork db migrate``): (before, after)."""
        conn = await self._connect()
        try:
            with self._errors(sent=False):
                return await migrate(conn, self.schema)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def schema_version(self) -> int | None:
        """The stored schema version (``None``: no store in the schema yet).

        Raises:
            SchemaVersionError: the store was migrated by a newer afterwork.
        """
        conn = await self._connect()
        try:
            with self._errors(sent=False):
                return await check(conn, self.schema)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        await self._pump.close()
        enqueuer = self._enqueuer
        if enqueuer is not None and not enqueuer.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(enqueuer), 5.0)
        finisher = self._finisher
        if finisher is not None and not finisher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(finisher), 5.0)
        trimming, self._trimming = self._trimming, None
        if trimming is not None:
            trimming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await trimming
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:
                pool.terminate()
        self._work.notify()

    # -- talking to PostgreSQL -----------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, *, sent: bool = True) -> Any:
        """Driver errors as afterwork's: unreachable → BackendUnavailable, else BackendError."""
        try:
            yield
        except (BackendError, EnqueueError, ConfigurationError):
            raise
        except asyncpg.exceptions.TooManyConnectionsError as exc:
            error = BackendUnavailable(
                f"PostgreSQL refused a connection: {exc} (max_connections is exhausted: "
                "lower pool_size or raise max_connections)"
            )
            error.may_have_applied = False
            raise error from exc
        except _UNREACHABLE as exc:
            error = BackendUnavailable(f"PostgreSQL cannot be reached: {exc!r}")
            error.may_have_applied = sent
            raise error from exc
        except asyncpg.PostgresError as exc:
            raise BackendError(f"PostgreSQL failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise BackendError("the PostgreSQL backend is not open; use `async with aw:`")
        try:
            conn = await pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError as exc:
            error = BackendUnavailable(
                f"no PostgreSQL connection was free within {self._acquire_timeout}s "
                f"(pool_size={self._pool_size})"
            )
            error.may_have_applied = False
            raise error from exc
        try:
            yield conn
        except _UNREACHABLE:
            # Never hand a connection that failed mid-operation to the next caller: its
            # protocol state may be stuck (asyncpg: "another operation is in progress").
            conn.terminate()
            raise
        finally:
            with contextlib.suppress(Exception):
                await pool.release(conn)

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        with self._errors(sent=False):
            async with self._conn() as conn:
                return await fn(conn)

    async def _write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; publish its events and wake-ups with the commit."""
        for attempt in range(_RETRIES):
            sent = False
            try:
                with self._errors(sent=False):
                    async with self._conn() as conn:
                        transaction = conn.transaction()
                        await transaction.start()
                        try:
                            tx = Tx(conn, self.now(), self._s)
                            result = await fn(tx)
                            await self._publish(tx)
                        except BaseException:
                            with contextlib.suppress(Exception):
                                await transaction.rollback()
                            raise
                        sent = True
                        await transaction.commit()
            except BackendUnavailable as exc:
                exc.may_have_applied = sent
                raise
            except BackendError as exc:
                if isinstance(exc.__cause__, _RETRYABLE) and attempt + 1 < _RETRIES:
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                raise
            break
        if tx.events:
            self._pump.poke()
        if tx.wake:
            self._work.notify()
        return result

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again while the server cannot be reached, for ``finish_retry_for``.

        For finishes and starts only: they are fenced by their lease token, so a retry of
        one that did commit changes nothing (it finds the lease gone and returns ``None``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._finish_retry_for
        delay = 0.05
        while True:
            try:
                return await call()
            except BackendUnavailable:
                if self._pool is None or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _channel(self, name: str) -> str:
        return f"{self.channel_prefix}.{name}"

    async def _publish(self, tx: Tx) -> None:
        """Append ``tx``'s events (ids in commit order) and queue its notifications."""
        conn = tx.conn
        notes: list[tuple[str, str]] = []
        if tx.events:
            await self._append_events(conn, tx.events)
            notes.append((self._channel("events"), ""))
        if tx.wake:
            notes.append((self._channel("work"), ""))
        notes += [(self._channel("cancel"), job_id) for job_id in tx.cancels]
        if notes:
            calls = ", ".join(f"pg_notify(${2 * i + 1}, ${2 * i + 2})" for i in range(len(notes)))
            await conn.execute(f"SELECT {calls}", *[v for note in notes for v in note])

    async def _append_events(
        self, conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        # Held to the commit: ids become visible in increasing order (see ``_pg_events``).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"events:{self.schema}")
        await conn.executemany(
            f"INSERT INTO {self._s}.events (kind, job_id, task, queue, status, attempts, at,"
            " progress, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            rows,
        )
        if batch := self._count_events(len(rows)):
            await self._trim_events(conn, batch)

    def _count_events(self, count: int) -> int:
        """Count ``count`` events written; how many old ones to trim now (0: none).

        Every ``step`` events written here, at most twice as many of the oldest past the
        retention as ``step`` (or as this write adds): short statements however far behind,
        and the deletes outpace the inserts.
        """
        before = self._events_written
        self._events_written += count
        step = min(max(self._event_retention // 10, 1), _EVENT_TRIM_STEP)
        if before // step == self._events_written // step:
            return 0
        return 2 * max(step, count)

    def _trim_sql(self, batch: int) -> str:
        """Delete at most ``batch`` of the oldest events beyond the retention; record how far
        (``events_trimmed``)."""
        return (
            f"WITH gone AS (DELETE FROM {self._s}.events WHERE id IN (SELECT id FROM"
            f" {self._s}.events WHERE id <= (SELECT max(id) FROM {self._s}.events) - $1"
            f" ORDER BY id LIMIT {int(batch)}) RETURNING id)"
            f" INSERT INTO {self._s}.meta (name, value)"
            " SELECT 'events_trimmed', max(id)::text FROM gone HAVING max(id) IS NOT NULL"
            " ON CONFLICT (name) DO UPDATE SET value ="
            " greatest(meta.value::bigint, excluded.value::bigint)::text"
        )

    async def _trim_events(self, conn: asyncpg.Connection, batch: int) -> None:
        """Trim at once, on the writer's connection (an enqueue: a reader resuming after it
        returned is told ``truncated``)."""
        await conn.execute(self._trim_sql(batch), self._event_retention)

    def _trim_later(self, batch: int) -> None:
        """Trim off the hot path (the group commit of begins and finishes), in a task."""
        self._trim_owed += batch
        if self._trimming is None or self._trimming.done():
            self._trimming = asyncio.get_running_loop().create_task(self._trim())

    async def _trim(self) -> None:
        """Trim what ``_trim_later`` owes, in statements of at most ``2 * _EVENT_TRIM_STEP``."""
        while self._trim_owed > 0:
            batch = min(self._trim_owed, 2 * _EVENT_TRIM_STEP)
            self._trim_owed -= batch

            async def trim(conn: asyncpg.Connection, batch: int = batch) -> None:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))", f"events:{self.schema}"
                    )
                    await conn.execute(self._trim_sql(batch), self._event_retention)

            try:
                await self._statement(trim)
            except Exception as exc:  # the next step tries again
                self._trim_owed = 0
                logger.debug("could not trim the events table (%s)", exc)
                return

    # -- notifications -------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """``LISTEN`` on a connection of its own; reconnect while the server is away."""
        backoff = 0.05
        channels = {
            self._channel("work"): self._work_notified,
            # The payload, when there is one, is the newest event id of that commit.
            self._channel("events"): lambda payload: self._pump.poke(
                int(payload) if payload.isdigit() else None
            ),
            self._channel("cancel"): self._cancelled,
        }
        while self._pool is not None or self._listener is not None:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for channel, handler in channels.items():

                    def relay(*args: Any, handler: Callable[[str], object] = handler) -> None:
                        handler(str(args[3]))

                    await conn.add_listener(channel, relay)
                backoff = 0.05
                self._work.notify()  # anything written while we were away: look again
                self._pump.poke()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("PostgreSQL listener lost its connection (%s); reconnecting", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            self._work.notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _work_notified(self, payload: str) -> None:
        """Jobs are due; an enqueue says so with the id of its last event (see
        ``_pg_enqueue``): its events were appended too, without a notification of their own."""
        self._work.notify()
        if payload.isdigit():
            self._pump.poke(int(payload))

    def _cancelled(self, job_id: str) -> None:
        for callback in list(self._cancel_callbacks):
            try:
                callback(job_id)
            except Exception:
                logger.exception("a cancel callback failed")

    def watch_cancels(self, callback: Callable[[str], object]) -> Callable[[], None]:
        """Call ``callback(job_id)`` when someone asks to cancel a running job."""
        self._cancel_callbacks.append(callback)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._cancel_callbacks.remove(callback)

        return unwatch

    # -- the Backend protocol ------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Create ``jobs``; enqueues made in the same moment share one statement and commit.

        Each call returns after the commit that holds its jobs; one call's jobs are never
        split across statements (atomic). See :mod:`._pg_enqueue`.
        """
        if not jobs:
            return []
        if needs_transaction(jobs):
            return await self._write(partial(_insert_each, jobs))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Job]] = loop.create_future()
        self._enqueues.append((jobs, future))
        if self._enqueuer is None or self._enqueuer.done():
            self._enqueuer = loop.create_task(self._flush_enqueues())
        return await future

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
        flat = [new for jobs in groups for new in jobs]
        for attempt in range(_RETRIES):
            sent = False
            try:
                with self._errors(sent=False):
                    async with self._conn() as conn:
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
        columns, headers = params(jobs, now)
        keyless = alone and not columns[8]  # the keys' column: empty if every key is NULL
        args = (*columns, f"events:{self.schema}", self._channel("work"), headers)
        make = partial(created, jobs, now, self.job_owner)

        async def send(sql: str) -> tuple[list[asyncpg.Record], list[Job]]:
            if len(jobs) < _OVERLAP_FROM:  # few jobs: not worth a task and a loop turn
                return await conn.fetch(sql, *args), make()
            return await while_sent(conn.fetch(sql, *args), make)

        rows: list[asyncpg.Record] | None = None
        if keyless:
            with contextlib.suppress(asyncpg.UniqueViolationError):
                rows, made = await send(self._insert_new_sql)
        if rows is not None:  # every job was inserted: one row, (how many, newest event)
            out: list[Job | None] = list(made)
            count, newest = int(rows[0][0]), rows[0][1]
        else:
            rows, made = await send(self._insert_sql)
            out, count = await self._settle_missing(conn, made, {row[0] for row in rows})
            newest = rows[0][1] if rows else None
        if count and (batch := self._count_events(count)):
            await self._trim_events(conn, batch)
        return out, (None if newest is None else int(newest))

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

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        token = os.urandom(16).hex()

        async def start(tx: Tx) -> Job:
            return await tx.insert(job, worker=worker, token=token, lease_ttl=lease_ttl)

        started = await self._write(start)
        if started.status is JobStatus.RUNNING and started.worker == worker:
            self._hold(token, started)
        return Claim(started, token)

    async def _promote(self, tx: Tx) -> None:
        # The set-based form of ``life.promote`` (the status alone, no event).
        await tx.conn.execute(
            f"UPDATE {tx.jobs} SET status = 'queued' WHERE id IN (SELECT id FROM {tx.jobs}"
            " WHERE status = 'scheduled' AND run_at <= $1 FOR UPDATE SKIP LOCKED)",
            tx.now,
        )

    async def _paused(self, conn: asyncpg.Connection) -> list[str]:
        return [row[0] for row in await conn.fetch(f"SELECT queue FROM {self._s}.paused")]

    def _ready_where(
        self, queues: Sequence[str] | None, excluded: list[str], held: list[str]
    ) -> tuple[str, list[Any]]:
        where = ["status = 'queued'"]
        params: list[Any] = []
        if queues is not None:
            params.append(list(dict.fromkeys(queues)))
            where.append(f"queue = ANY(${len(params)}::text[])")
        if held:
            params.append(held)
            where.append(f"NOT (queue = ANY(${len(params)}::text[]))")
        if excluded:
            params.append(excluded)
            where.append(f"NOT (task = ANY(${len(params)}::text[]))")
        return " AND ".join(where), params

    async def _claim_rows(
        self, tx: Tx, rows: Sequence[Any], worker: str, lease_ttl: float
    ) -> list[Claim]:
        """Claim the locked ``rows`` (job columns) through ``life.claim``, in one batch."""
        claims: list[Claim] = []
        updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row in rows:
            job, problems = load(tuple(row))
            if problems:
                await tx.quarantine(job)
                continue
            token = os.urandom(16).hex()
            change = life.claim(job, worker=worker, now=tx.now, lease_ttl=lease_ttl)
            columns = tx.columns(job, change.job, token=token, lease_ttl=lease_ttl)
            updates.setdefault(tuple(columns), []).append((job.id, *columns.values()))
            claims.append(Claim(change.job, token))
            self._hold(token, change.job)
        for names, values in updates.items():
            assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, 2))
            await tx.conn.executemany(f"UPDATE {tx.jobs} SET {assignments} WHERE id = $1", values)
        return claims

    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        exclude_tasks: Collection[str] = (),
        limits: Mapping[str, FlowLimit] | None = None,
        rates: Mapping[str, RateLimit] | None = None,
    ) -> list[Claim]:
        if limit <= 0 or (queues is not None and not queues):
            return []
        excluded = list(exclude_tasks)
        if limits or rates:
            return await self._claim_limited(
                worker, queues, limit, lease_ttl, excluded, limits or {}, rates or {}
            )
        self._flow_skipped = self._conc_skipped = False
        self._rate_next = None
        # One statement (see ``_pg_batch``): due rows picked, leased and returned.
        where = ["true"]
        params: list[Any] = []
        if queues is not None:
            params.append(list(dict.fromkeys(queues)))
            where.append(f"queue = ANY(${len(params) + 4}::text[])")
        if excluded:
            params.append(excluded)
            where.append(f"NOT (task = ANY(${len(params) + 4}::text[]))")
        sql = claim_sql(f"{self._s}.jobs", self._s, " AND ".join(where))
        now = self.now()

        async def claim(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, worker, now, lease_ttl, limit, *params))

        claims: list[Claim] = []
        for row in await self._statement(claim):
            job, problems = load(tuple(row)[:-1])
            if problems:
                await self._quarantine(job)
                continue
            claims.append(Claim(job, row["token"]))
            self._hold(row["token"], job)
        claims.sort(key=lambda c: life.ready_order(c.job))
        return claims

    async def _statement(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``fn`` (one write statement, in autocommit), retried on a deadlock or
        serialization failure; an unreachable server may have applied it."""
        for attempt in range(_RETRIES):
            try:
                with self._errors(sent=True):
                    async with self._conn() as conn:
                        return await fn(conn)
            except BackendError as exc:
                if isinstance(exc.__cause__, _RETRYABLE) and attempt + 1 < _RETRIES:
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _quarantine(self, claimed: Job) -> None:
        """Fail a job just claimed whose record cannot be decoded, instead of running it."""

        async def quarantine(tx: Tx) -> None:
            job = await tx.get(claimed.id)
            if job is not None and job.status is JobStatus.RUNNING:
                await tx.quarantine(job)

        await self._write(quarantine)

    def _hold(self, token: str, job: Job) -> None:
        """Remember the job this process holds the lease of, as it last wrote it."""
        if len(self._held) >= _HELD_MAX:
            self._held.clear()  # forgetting only costs the per-row path
        self._held[job.id] = (token, job)

    def _holding(self, lease: Lease) -> Job | None:
        held = self._held.get(lease.job_id)
        return held[1] if held is not None and held[0] == lease.token else None

    async def _claim_limited(
        self,
        worker: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        excluded: list[str],
        limits: Mapping[str, FlowLimit],
        rates: Mapping[str, RateLimit],
    ) -> list[Claim]:
        """A claim that passes over jobs whose flow group is at its fleet-wide limit
        (running jobs, or starts in a rate limit's window: see ``_pg_flow``).

        Claims with limits are serialized by an advisory lock, so the running jobs and
        starts they count cannot change under them; rows are then locked ``SKIP LOCKED``
        as usual, and the claimed jobs of rate-limited tasks join their groups' starts as
        pending (their begin stamps the start time).
        """

        async def claim(tx: Tx) -> list[Claim]:
            conn = tx.conn
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"flow:{self.schema}")
            groups = PgGroups(limits, rates, pg=conn, schema=self._s, now=tx.now)
            await self._promote(tx)
            for task, kwargs in await conn.fetch(
                f"SELECT task, kwargs FROM {tx.jobs} WHERE status = 'running'"
                " AND task = ANY($1::text[])",
                list(limits),
            ):
                group = groups.of(task, kwargs)
                if group is not None:
                    groups.used[group[0]] += 1
            where, params = self._ready_where(queues, excluded, await self._paused(conn))
            n = len(params)
            query = (
                f"SELECT priority, due_ms, id, {COLS} FROM {tx.jobs} WHERE {where}"
                f" ORDER BY priority DESC, due_ms, id LIMIT ${n + 1} OFFSET ${n + 2}"
            )

            async def fetch(count: int, offset: int) -> list[Any]:
                return [tuple(row) for row in await conn.fetch(query, *params, count, offset)]

            found = await groups.pick_async(fetch, limit)
            locked = {
                row[0]
                for row in await conn.fetch(
                    f"SELECT id FROM {tx.jobs} WHERE id = ANY($1::text[]) AND status = 'queued'"
                    " FOR UPDATE SKIP LOCKED",
                    [row[2] for row in found],
                )
            }
            rows = [row for row in found if row[2] in locked]
            for row in rows:
                groups.record_start(row)
            await groups.write_starts_async()
            self._flow_skipped = groups.skipped or groups.rate_next is not None
            self._conc_skipped = groups.skipped
            self._rate_next = groups.rate_next
            return await self._claim_rows(tx, [row[3:] for row in rows], worker, lease_ttl)

        return await self._write(claim)

    def rate_next(self) -> float | None:
        """When a job the last claim passed over for a rate limit may start (store time)."""
        return self._rate_next

    async def rate_starts(self, group: str, rate: RateLimit) -> list[float]:
        """The recorded starts of a rate group still within its window."""
        now = self.now()
        return await self._read(
            partial(read_starts, schema=self._s, group=group, now=now, rate=rate)
        )

    async def begin(self, leases: Sequence[Lease]) -> list[Job | None]:
        if not leases:
            return []
        # Starts ride in the same group commit as finishes.
        if len(leases) == 1:
            return [await self._grouped(leases[0], None)]
        return list(await asyncio.gather(*(self._grouped(lease, None) for lease in leases)))

    async def _begin_one(self, tx: Tx, lease: Lease) -> Job | None:
        job, held = await tx.held(lease.job_id)
        change = None if job is None else life.begin(job, held=held, token=lease.token, now=tx.now)
        started = None if job is None else await tx.apply(job, change)
        if started is not None and change is not None and change.event == "started":
            assert started.started_at is not None
            await stamp_start(tx.conn, tx.schema, lease.job_id, started.started_at)
        return started

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply()
        now = self.now()
        until = now + lease_ttl
        sql = heartbeat_sql(f"{self._s}.jobs")
        ids = [lease.job_id for lease in leases]
        tokens = [lease.token for lease in leases]

        async def renew(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, until, lease_ttl, ids, tokens))

        renewed = {row[0]: bool(row[1]) for row in await self._statement(renew)}
        lost = frozenset(lease.job_id for lease in leases if lease.job_id not in renewed)
        for lease in leases:
            job = self._holding(lease)
            if lease.job_id in lost:
                self._held.pop(lease.job_id, None)
            elif job is not None:
                self._held[job.id] = (lease.token, replace(job, lease_expires_at=until))
        cancel = frozenset(job_id for job_id, asked in renewed.items() if asked)
        return HeartbeatReply(lost=lost, cancel=cancel)

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        status = outcome.status
        if status not in TERMINAL_STATUSES and status not in (
            JobStatus.SCHEDULED,
            JobStatus.QUEUED,
        ):
            raise ValueError(f"not an outcome: {status!r}")
        result: Job | None = await self._grouped(lease, outcome)
        if result is not None and self._flow_skipped:
            self._work.notify()  # a slot of a fleet limit is free: claim again
        return result

    async def _finish_one(self, tx: Tx, lease: Lease, outcome: Outcome) -> Job | None:
        job, held = await tx.held(lease.job_id)
        if job is None:
            return None
        change = life.finish(job, held=held, token=lease.token, outcome=outcome, now=tx.now)
        return await tx.apply(job, change)

    async def _grouped(self, lease: Lease, outcome: Outcome | None) -> Any:
        """A begin (``outcome`` ``None``) or finish, committed with the others of this turn.

        Each is still fenced by its own token; one statement (or, for leases this
        process does not remember, one transaction) commits them all.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._finishes.append((lease, outcome, future))
        if self._finisher is None or self._finisher.done():
            self._finisher = loop.create_task(self._flush_finishes())
        return await future

    async def _flush_finishes(self) -> None:
        # One loop turn first: the jobs that end in this turn free their slots before their
        # finishes are queued, and the starts of the jobs that take them join this flush.
        await asyncio.sleep(0)
        while self._finishes:
            batch, self._finishes = (
                self._finishes[:_FINISH_BATCH],
                self._finishes[_FINISH_BATCH:],
            )
            try:
                results = await self._retrying(partial(self._flush, batch))
            except Exception as exc:
                for lease, _, future in batch:
                    self._held.pop(lease.job_id, None)  # it may have applied: read it back
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _flush(self, batch: list[_Pending]) -> list[Job | None]:
        """Apply a batch of begins and finishes: one statement when this process holds
        every lease as it last wrote it (see ``_pg_batch``), else one transaction."""
        now = self.now()
        group = Batch(now)
        seen: set[str] = set()
        changes: list[life.Change] = []
        for lease, outcome, _ in batch:
            job = self._holding(lease)
            change = None
            if job is not None and lease.job_id not in seen:
                token = lease.token
                change = (
                    life.begin(job, held=token, token=token, now=now)
                    if outcome is None
                    else life.finish(job, held=token, token=token, outcome=outcome, now=now)
                )
            if change is None or change.event is None:
                return await self._flush_rows(batch)  # not held, twice, or begun already
            seen.add(lease.job_id)
            changes.append(change)
            (group.begin if outcome is None else group.finish)(lease.token, change)
        sql = flush_sql(self._s)
        args = group.args(f"events:{self.schema}", self._channel("events"), self._channel("work"))

        async def flush(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(sql, *args)

        row = await self._statement(flush)
        finished, begun = set(row["finished"] or ()), set(row["begun"] or ())
        asked = set(row["asked"] or ())  # begun jobs whose cancel was asked meanwhile
        results: list[Job | None] = []
        again: list[_Pending] = []
        for (lease, outcome, future), change in zip(batch, changes, strict=True):
            if outcome is not None:
                self._held.pop(lease.job_id, None)
                results.append(change.job if lease.job_id in finished else None)
            elif lease.job_id in begun:
                job = change.job
                if lease.job_id in asked and not job.cancel_requested:
                    job = life.evolve(job, cancel_requested=True)  # as the row now says
                self._held[lease.job_id] = (lease.token, job)
                results.append(job)
            else:
                # Lost, or begun by an earlier try whose reply was lost: read the row.
                self._held.pop(lease.job_id, None)
                again.append((lease, outcome, future))
                results.append(None)
        if again:
            redone = iter(await self._flush_rows(again))
            results = [
                next(redone) if outcome is None and lease.job_id not in begun else result
                for (lease, outcome, _), result in zip(batch, results, strict=True)
            ]
        newest = row["newest"]
        if newest is not None:
            self._pump.poke(int(newest))
            if trim := self._count_events(len(finished) + len(begun)):
                self._trim_later(trim)
        if group.wake and finished:
            self._work.notify()
        return results

    async def _flush_rows(self, batch: list[_Pending]) -> list[Job | None]:
        """The batch in one transaction, row by row (reads each job back, locked)."""

        async def run(tx: Tx) -> list[Job | None]:
            results: list[Job | None] = []
            for lease, outcome, _ in batch:
                if outcome is None:
                    results.append(await self._begin_one(tx, lease))
                else:
                    results.append(await self._finish_one(tx, lease, outcome))
            return results

        results = await self._write(run)
        for (lease, outcome, _), job in zip(batch, results, strict=True):
            if outcome is None and job is not None:
                self._hold(lease.token, job)
            else:
                self._held.pop(lease.job_id, None)
        return results

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        async def set_progress(tx: Tx) -> bool:
            job, held = await tx.held(lease.job_id)
            if job is None:
                return False
            change = life.progress(
                job, held=held, token=lease.token, progress=progress, message=message
            )
            return await tx.apply(job, change) is not None

        done = await self._write(set_progress)
        held = self._holding(lease)
        if held is not None:
            if done:
                moved = replace(held, progress=progress, progress_message=message)
                self._held[lease.job_id] = (lease.token, moved)
            else:
                self._held.pop(lease.job_id, None)
        return done

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        async def recover(tx: Tx) -> list[Job]:
            rows = await tx.conn.fetch(
                f"SELECT {COLS} FROM {tx.jobs} WHERE status = 'running'"
                " AND lease_expires_at <= $1 ORDER BY lease_expires_at, id"
                " FOR UPDATE SKIP LOCKED",
                tx.now,
            )
            recovered: list[Job] = []
            for row in rows:
                job = load(tuple(row))[0]
                if not life.lease_expired(job, tx.now):
                    continue
                change = life.recover(job, now=tx.now, max_recoveries=max_recoveries)
                back = await tx.apply(job, change)
                assert back is not None
                recovered.append(back)
            return recovered

        return await self._write(recover)

    async def get(self, job_id: str) -> Job | None:
        async def get(conn: asyncpg.Connection) -> Job | None:
            return load_one(
                await conn.fetchrow(f"SELECT {COLS} FROM {self._s}.jobs WHERE id = $1", job_id)
            )

        return await self._read(get)

    async def cancel(self, job_id: str) -> Job | None:
        async def cancel(tx: Tx) -> Job | None:
            job = await tx.get(job_id)
            if job is None:
                return None
            return await tx.apply(job, life.cancel(job, now=tx.now)) or job

        return await self._write(cancel)

    async def _due_in(self, queues: Sequence[str] | None) -> float | None:
        """0 if a job is ready in ``queues``, else seconds until the next delayed one is due."""

        async def due(conn: asyncpg.Connection) -> float | None:
            held = await self._paused(conn)
            names = None if queues is None else [q for q in queues if q not in held]
            if names is not None and not names:
                return None
            where, params = self._ready_where(names, [], held if names is None else [])
            if await conn.fetchval(f"SELECT 1 FROM {self._s}.jobs WHERE {where} LIMIT 1", *params):
                return 0.0
            where = where.replace("status = 'queued'", "status = 'scheduled'", 1)
            at = await conn.fetchval(
                f"SELECT min(run_at) FROM {self._s}.jobs WHERE {where}", *params
            )
            return None if at is None else max(float(at) - self.now(), 0.0)

        return await self._read(due)

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        """Return when work may be due, or after ``timeout`` seconds.

        A ``NOTIFY`` from any process wakes it at once; without one (lost, or no
        ``LISTEN``) it looks every ``poll_interval``, backing off to ``max_poll_interval``.
        """
        if queues is not None and not queues:
            queues = None
        deadline = time.monotonic() + max(timeout, 0.0)
        interval = self._poll_interval
        if self._flow_skipped:
            # The last claim passed over jobs at a fleet limit: wait for a finish (or a
            # poll, backing off while the limit holds); for a rate limit, until its next
            # start is allowed (or new work comes).
            self._flow_wait = min(self._flow_wait * 2, self._max_poll_interval)
            wait = max(timeout, 0.0)
            if self._conc_skipped or self._rate_next is None:
                wait = min(wait, self._flow_wait)
            if self._rate_next is not None:
                wait = min(wait, max(self._rate_next - self.now(), 0.0))
            await self._work.wait(self._work.ticket(), wait)
            return
        self._flow_wait = self._poll_interval / 2
        while True:
            ticket = self._work.ticket()
            try:
                due_in = await self._due_in(queues)
            except BackendError:
                due_in = None  # the server is away: wait, the claim loop will retry
            if due_in is not None and due_in <= 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(remaining, interval)
            if due_in is not None:
                wait = min(wait, due_in)
            if await self._work.wait(ticket, wait) or self._pool is None:
                return
            interval = min(interval * 2, self._max_poll_interval)

    # -- events and channels -------------------------------------------------------------

    async def _fetch_events(self, cursor: int) -> tuple[list[tuple[Any, ...]], int]:
        async def fetch(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                trimmed = await conn.fetchval(
                    f"SELECT value FROM {self._s}.meta WHERE name = 'events_trimmed'"
                )
                rows = await conn.fetch(
                    f"SELECT {_EVENT_COLUMNS} FROM {self._s}.events WHERE id > $1"
                    " ORDER BY id LIMIT 1000",
                    cursor,
                )
            return [tuple(row) for row in rows], int(trimmed or 0)

        return await self._read(fetch)

    async def _fetch_event_range(
        self, after: int, until: int
    ) -> tuple[list[tuple[Any, ...]], int, int]:
        async def fetch(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], int, int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                trimmed = await conn.fetchval(
                    f"SELECT value FROM {self._s}.meta WHERE name = 'events_trimmed'"
                )
                newest = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {self._s}.events")
                rows = (
                    await conn.fetch(
                        f"SELECT {_EVENT_COLUMNS} FROM {self._s}.events"
                        " WHERE id > $1 AND id <= $2 ORDER BY id",
                        after,
                        until,
                    )
                    if after < until
                    else []
                )
            return [tuple(row) for row in rows], int(trimmed or 0), int(newest)

        return await self._read(fetch)

    async def _newest_event(self) -> int:
        async def newest(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {self._s}.events"))

        return await self._read(newest)

    @property
    def event_retention(self) -> int:
        """About how many recent events the events table keeps."""
        return self._event_retention

    def events(self, since: str | None = None) -> EventStream:
        """Events from now on; with ``since`` (an event id), first the kept ones after it.

        If events after ``since`` were trimmed, a ``truncated`` marker comes first instead.
        """
        return self._pump.subscribe(since)

    async def publish(self, channel: str, data: str) -> None:
        """Append the message to the events table: every process's pump delivers it."""
        row = (MESSAGE_KIND, "", channel, "", "queued", 0, self.now(), None, data)

        async def publish(tx: Tx) -> None:
            tx.events.append(row)

        await self._write(publish)

    async def subscribe(self, channel: str) -> MessageStream:
        """Messages on ``channel`` committed from now on, by this or any other process."""
        return await self._pump.subscribe_channel(channel)

    # -- queue pause -----------------------------------------------------------------------

    async def pause_queue(self, queue: str) -> None:
        async def pause(tx: Tx) -> None:
            await tx.conn.execute(
                f"INSERT INTO {self._s}.paused (queue) VALUES ($1) ON CONFLICT DO NOTHING", queue
            )

        await self._write(pause)

    async def resume_queue(self, queue: str) -> None:
        async def resume(tx: Tx) -> None:
            await tx.conn.execute(f"DELETE FROM {self._s}.paused WHERE queue = $1", queue)
            tx.wake = True  # its waiting jobs are work again

        await self._write(resume)

    async def paused_queues(self) -> frozenset[str]:
        return frozenset(await self._read(self._paused))

    # -- worker presence -------------------------------------------------------------------

    async def announce_worker(self, info: WorkerInfo) -> None:
        import json

        data = json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))

        async def upsert(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"DELETE FROM {self._s}.workers WHERE expires_at <= $1", info.last_seen
            )
            await conn.execute(
                f"INSERT INTO {self._s}.workers (id, info, started_at, expires_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE"
                " SET info = excluded.info, expires_at = excluded.expires_at",
                info.id,
                data,
                info.started_at,
                info.expires_at,
            )

        await self._read(upsert)

    async def remove_worker(self, worker_id: str) -> None:
        async def remove(conn: asyncpg.Connection) -> None:
            await conn.execute(f"DELETE FROM {self._s}.workers WHERE id = $1", worker_id)

        await self._read(remove)

    async def list_workers(self) -> list[WorkerInfo]:
        import json

        now = self.now()

        async def live(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT info FROM {self._s}.workers WHERE expires_at > $1"
                    " ORDER BY started_at, id",
                    now,
                )
            )

        workers: list[WorkerInfo] = []
        for (text,) in await self._read(live):
            try:
                workers.append(WorkerInfo.from_dict(json.loads(text)))
            except (ValueError, TypeError, KeyError):
                continue  # a record this version cannot read: presence is advisory
        return workers

    # -- the Inspector protocol ------------------------------------------------------------

    async def list_jobs(self, filter: JobFilter) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        statuses = [JobStatus(s).value for s in filter.statuses]
        if statuses:
            params.append(statuses)
            where.append(f"status = ANY(${len(params)}::text[])")
        for column, value in (
            ("queue", filter.queue),
            ("task", filter.task),
        ):
            if value is not None:
                params.append(value)
                where.append(f"{column} = ${len(params)}")
        if filter.before is not None:
            params.append(filter.before)
            where.append(f"id < ${len(params)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        params.append(max(filter.limit, 0))
        sql = f"SELECT {COLS} FROM {self._s}.jobs{clause} ORDER BY id DESC LIMIT ${len(params)}"

        async def fetch(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        return [load(tuple(row))[0] for row in await self._read(fetch)]

    async def due_or_running(self) -> int:
        async def count(conn: asyncpg.Connection) -> int:
            return int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {self._s}.jobs WHERE status IN ('queued', 'running')"
                    " OR (status = 'scheduled' AND run_at <= $1)",
                    self.now(),
                )
            )

        return await self._read(count)

    async def stats(self) -> list[QueueStats]:
        async def stats(conn: asyncpg.Connection) -> list[QueueStats]:
            by_queue: dict[str, dict[JobStatus, int]] = {}
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                counted = await conn.fetch(
                    f"SELECT queue, status, count(*) FROM {self._s}.jobs GROUP BY queue, status"
                )
                oldest_rows = await conn.fetch(
                    f"SELECT queue, min(run_at) FROM {self._s}.jobs"
                    " WHERE status IN ('queued', 'scheduled') AND run_at <= $1 GROUP BY queue",
                    self.now(),
                )
            for queue, status, count in counted:
                counts = by_queue.setdefault(queue, dict.fromkeys(JobStatus, 0))
                if status in JobStatus.__members__.values():
                    counts[JobStatus(status)] += count
            oldest = {row[0]: row[1] for row in oldest_rows}
            return [
                QueueStats(queue=name, counts=counts, oldest_waiting_at=oldest.get(name))
                for name, counts in sorted(by_queue.items())
            ]

        return await self._read(stats)

    async def retry(self, job_id: str) -> Job | None:
        async def retry(tx: Tx) -> Job | None:
            job = await tx.get(job_id)
            if job is None:
                return None
            key_free = job.key is None or not await tx.select(
                f"key = $1 AND status IN {ACTIVE_SQL}", job.key
            )
            change = life.retry(job, now=tx.now, key_free=key_free)
            return await tx.apply(job, change, force=("result",)) or job

        return await self._write(retry)

    async def purge(self, *, older_than: float | None = None) -> int:
        """Delete finished jobs in batches of a few hundred rows (short transactions)."""
        now = self.now()
        cut = None if older_than is None else now - older_than
        total = 0
        while True:

            async def purge(tx: Tx) -> int:
                # The set-based form of ``life.purgeable``: ``expires_at`` is the finished
                # time plus ``result_ttl``, written when the job finished.
                old = "" if cut is None else " OR finished_at <= $2"
                params: list[Any] = [now] if cut is None else [now, cut]
                result = await tx.conn.execute(
                    f"DELETE FROM {tx.jobs} WHERE id IN (SELECT id FROM {tx.jobs}"
                    f" WHERE expires_at <= $1{old} LIMIT {_PURGE_BATCH} FOR UPDATE SKIP LOCKED)",
                    *params,
                )
                return int(result.split()[-1])

            deleted = await self._write(purge)
            total += deleted
            if deleted < _PURGE_BATCH:
                break

        async def ticks(tx: Tx) -> None:
            # Old tick marks go too, but each schedule keeps its latest (``last_tick``).
            await tx.conn.execute(
                f"DELETE FROM {self._s}.ticks t WHERE tick < $1 AND tick <"
                f" (SELECT max(u.tick) FROM {self._s}.ticks u WHERE u.schedule = t.schedule)",
                now - TICK_RETENTION,
            )

        await self._write(ticks)
        return total

    # -- the Ticks protocol ----------------------------------------------------------------

    async def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> Job | None:
        async def enqueue_tick(tx: Tx) -> Job | None:
            marked = await tx.conn.fetchval(
                f"INSERT INTO {self._s}.ticks (schedule, tick, job_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                schedule,
                tick,
                job.id,
            )
            return await tx.insert(job) if marked else None

        return await self._write(enqueue_tick)

    async def last_tick(self, schedule: str) -> float | None:
        async def last_tick(conn: asyncpg.Connection) -> float | None:
            value = await conn.fetchval(
                f"SELECT max(tick) FROM {self._s}.ticks WHERE schedule = $1", schedule
            )
            return None if value is None else float(value)

        return await self._read(last_tick)

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


async def _close_quietly(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


async def _reset(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs before reuse: no open transaction.

    asyncpg's default reset costs a round trip per release (``RESET ALL``, ``UNLISTEN *``…);
    this store sets no session state on pooled connections (``LISTEN`` has its own, and
    its advisory locks are transaction-scoped).
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


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
