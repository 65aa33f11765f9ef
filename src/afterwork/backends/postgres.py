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
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .. import _lifecycle as life
from .._notify import Notifier
from ..exceptions import BackendError, BackendUnavailable, ConfigurationError, EnqueueError
from ..job import Job, JobOwner, JobStatus
from ._pg_enqueue_path import EnqueueMixin, _PendingEnqueue
from ._pg_events import EventPump
from ._pg_host import _RETRIES, _RETRYABLE
from ._pg_leases import HistoryMixin, LeasesMixin
from ._pg_listen import ListenMixin
from ._pg_local import LocalWritesMixin
from ._pg_rows import ACTIVE_SQL, COLS, Tx, load, load_one
from ._pg_schema import SCHEMA_VERSION, check, migrate, not_migrated, quote_schema
from ._pg_worker_path import WorkerPathMixin, _Pending
from .base import (
    Clock,
    JobFilter,
    NewJob,
    QueueStats,
    WorkerInfo,
)

__all__ = ("PostgresBackend",)

logger: logging.Logger = logging.getLogger(__name__)

T = TypeVar("T")

_PURGE_BATCH = 500
#: Events are trimmed every this many written (at most twice as many deleted at once).
_EVENT_TRIM_STEP = 1000
#: How long tick marks are kept (the contract asks for at least a day).
TICK_RETENTION = 7 * 86_400.0


_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)

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


class PostgresBackend(
    EnqueueMixin, WorkerPathMixin, LocalWritesMixin, ListenMixin, LeasesMixin, HistoryMixin
):
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
        self._prebegun: dict[str, str] = {}
        """Job id → token of the jobs a claim began that the worker has not begun yet."""
        self._claiming = 0  # claims in flight
        self._early_cancels: dict[str, None] = {}  # cancels pushed while one was
        #: After a claim that found fewer jobs than asked: its ticket, queues, next due time.
        self._after_claim: tuple[int, frozenset[str] | None, float | None] | None = None
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
        await self._give_back_kept()  # the enqueue path's connection (``_pg_enqueue_path``)
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

    async def _acquire(self, pool: asyncpg.Pool | None) -> asyncpg.Connection:
        """A connection of ``pool``; a typed error if the store is closed or none is free
        within ``acquire_timeout``."""
        if pool is None:
            raise BackendError("the PostgreSQL backend is not open; use `async with aw:`")
        try:
            return await pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError as exc:
            error = BackendUnavailable(
                f"no PostgreSQL connection was free within {self._acquire_timeout}s "
                f"(pool_size={self._pool_size})"
            )
            error.may_have_applied = False
            raise error from exc

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        conn = await self._acquire(pool)
        assert pool is not None  # else ``_acquire`` raised
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

    # -- the Backend protocol ------------------------------------------------------------

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
