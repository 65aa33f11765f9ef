"""The SQLite backend: durable jobs in one file, shared by the processes of one host.

``Afterwork("sqlite:///./afterwork.db")`` (and ``Afterwork()`` with no URL) store jobs
here. A web process and several ``afterwork worker`` processes may share the file:

* the database runs in WAL mode, so readers never block the writer;
* every change is one ``BEGIN IMMEDIATE`` transaction (claims use ``UPDATE … RETURNING``),
  so two processes can never claim the same job and a crash never half-writes one;
* leases carry a fresh token per claim; ``finish``/``heartbeat`` are fenced by it;
* "database is locked" is retried (``busy_timeout``, then backoff up to ``lock_timeout``)
  and never reaches the caller; other driver errors become :class:`BackendError`;
* a row whose JSON cannot be decoded is failed as ``afterwork.MalformedRecord`` when a
  worker claims it, and the worker carries on.

Time is the host clock: SQLite is a single-host store. See ``docs/sqlite.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .. import _lifecycle as life
from .._notify import Notifier
from ..exceptions import BackendUnavailable, ConfigurationError, SchemaVersionError
from ..job import TERMINAL_STATUSES, Job, JobStatus
from ._sqlite_db import Database, connect
from ._sqlite_events import MESSAGE_KIND, EventPump
from ._sqlite_flow import STAMP_START, Groups, read_starts
from ._sqlite_history import HistoryMixin
from ._sqlite_inspect import InspectorMixin
from ._sqlite_leases import LeasesMixin
from ._sqlite_pause import PauseMixin, paused_queues, without_paused
from ._sqlite_presence import PresenceMixin
from ._sqlite_rows import COLS, INSERT_EVENT, SELECT, Connection, Tx, load, load_one
from ._sqlite_schema import META_DDL, MIGRATIONS, SCHEMA_VERSION
from ._sqlite_tx import enqueue_in, insert_jobs
from ._sqlite_wake import WakeSignals
from .base import (
    Claim,
    Clock,
    EventStream,
    FlowLimit,
    HeartbeatReply,
    Lease,
    MessageStream,
    NewJob,
    Outcome,
    RateLimit,
)

if TYPE_CHECKING:
    from .._engine.writebehind import LocalRecord

__all__ = ("SQLiteBackend", "path_from_url")

logger: logging.Logger = logging.getLogger(__name__)

T = TypeVar("T")

_FINISH_BATCH = 256

#: Rows a write may touch and still run on the caller's thread (``_sqlite_db``, inline).
_INLINE_ROWS = 64
_Pending = tuple[Callable[[Tx], Any], "asyncio.Future[Any]"]
_SYNCHRONOUS = {"off", "normal", "full", "extra"}


def path_from_url(url: str) -> str:
    """The file path in ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    path = parts.netloc + parts.path
    if path.startswith("/"):
        path = path[1:]
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ConfigurationError(
            "an in-memory SQLite store cannot be shared between connections; "
            "use memory:// or a file path such as sqlite:///./afterwork.db"
        )
    return path


def _create_private(path: str, mode: int) -> None:
    """Create the database file with ``mode`` if it does not exist yet.

    SQLite would create it ``0644`` (less the umask); created here first, it stays private,
    and SQLite copies the database file's mode to the ``-wal`` and ``-shm`` files it makes.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    except OSError as exc:
        raise BackendUnavailable(f"cannot create the SQLite store at {path!r}: {exc}") from exc
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
    finally:
        os.close(fd)


class SQLiteBackend(InspectorMixin, PauseMixin, PresenceMixin, LeasesMixin, HistoryMixin):
    """Jobs in a SQLite file (WAL), shared safely by the processes of one host.

    Args:
        path: the database file; created with its schema if missing.
        clock: seconds since the epoch (default ``time.time``; tests pass a fake one).
        busy_timeout: seconds SQLite waits for a lock before reporting "busy".
        lock_timeout: seconds a transaction keeps being retried while the file is locked
            before :class:`~afterwork.exceptions.BackendUnavailable` is raised.
        synchronous: ``NORMAL`` (default: durable across process crashes; in WAL mode a
            power loss may undo the last transactions) or ``FULL`` (fsync every commit).
        poll_interval: first interval, in seconds, at which an idle worker looks for
            jobs enqueued by other processes; it doubles up to ``max_poll_interval``.
        max_poll_interval: the longest interval between those looks.
        event_poll_interval: how often the events table is tailed for subscribers.
        event_retention: how many recent events the events table keeps.
        file_mode: permissions of the database file when this creates it (default
            ``0o600``: owner only, since jobs hold arguments and results); SQLite gives its
            ``-wal`` and ``-shm`` files the same. An existing file keeps its mode.

    Example:
        ```python
        aw = Afterwork("sqlite:///./afterwork.db?synchronous=full")
        ```
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Clock | None = None,
        busy_timeout: float = 5.0,
        lock_timeout: float = 30.0,
        synchronous: str = "normal",
        poll_interval: float = 0.05,
        max_poll_interval: float = 0.5,
        event_poll_interval: float = 0.1,
        event_retention: int = 10_000,
        file_mode: int = 0o600,
    ) -> None:
        if not 0 <= file_mode <= 0o777:
            raise ConfigurationError(f"file_mode must be permission bits, not {file_mode!r}")
        self.file_mode: int = file_mode
        if synchronous.lower() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, not {synchronous!r}"
            )
        if min(busy_timeout, lock_timeout, poll_interval, max_poll_interval) <= 0:
            raise ConfigurationError("SQLite timeouts and intervals must be positive")
        if event_retention < 1:
            raise ConfigurationError("event_retention must be at least 1")
        self.path: str = os.path.abspath(path)
        self._clock: Clock = clock or time.time
        # Passing time for lease expiry: an injected clock stands for both.
        self._monotonic: Clock = clock or time.monotonic
        # Leases as this process last saw them: job id -> ((token, expiry stamp), seen at).
        self._seen: dict[str, tuple[tuple[str, float], float]] = {}
        self._poll_interval = poll_interval
        self._max_poll_interval = max(max_poll_interval, poll_interval)
        self._event_retention = event_retention
        self._events_written = 0
        self._db = Database(
            self.path,
            busy_timeout=busy_timeout,
            lock_timeout=lock_timeout,
            synchronous=synchronous.upper(),
        )
        self._pump = EventPump(
            lambda: connect(self.path, busy_timeout=busy_timeout, synchronous="NORMAL"),
            poll_interval=event_poll_interval,
            clock=self._clock,
        )
        self._work = Notifier()
        self._signals = WakeSignals(self.path)  # wake-ups from the other processes
        self._remote_wakes = 0
        self._flow_skipped = False  # the last claim passed over jobs at a fleet limit
        self._flow_wait = self._poll_interval / 2
        self._conc_skipped = False  # ... at a concurrency limit (a finish may free a slot)
        self._rate_next: float | None = None  # when a job passed over for a rate may start
        self._finishes: list[_Pending] = []
        self._finisher: asyncio.Task[None] | None = None
        self._finish_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None, **options: Any) -> SQLiteBackend:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

        Query parameters set the keyword options, e.g. ``?synchronous=full&busy_timeout=10``.
        """
        path = path_from_url(url)
        floats = {
            "busy_timeout",
            "lock_timeout",
            "poll_interval",
            "max_poll_interval",
            "event_poll_interval",
        }
        query: dict[str, Any] = {}
        for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            try:
                if name in floats:
                    query[name] = float(value)
                elif name == "event_retention":
                    query[name] = int(value)
                elif name == "file_mode":
                    query[name] = int(value, 8)
                elif name == "synchronous":
                    query[name] = value
                else:
                    raise ConfigurationError(f"unknown SQLite URL option {name!r} in {url!r}")
            except ValueError:
                raise ConfigurationError(f"bad value for {name!r} in {url!r}") from None
        return cls(path, clock=clock, **{**query, **options})

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    @property
    def busy_retries(self) -> int:
        """Transactions this process retried because another one held the write lock."""
        return self._db.busy_retries

    # -- lifecycle -----------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    async def open(self) -> None:
        if self._db.is_open:
            return
        try:
            _create_private(self.path, self.file_mode)
            await self._db.open(self._setup)
        except BaseException:
            await self._db.aclose()
            raise
        self._pump.open()

    async def aclose(self) -> None:
        self._signals.close()
        self._pump.close()
        await self._db.aclose()
        self._work.notify()

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("SQLite store %s runs in %s mode, not WAL", self.path, mode)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(META_DDL)
            row = conn.execute(
                "SELECT value FROM afterwork_meta WHERE name = 'schema_version'"
            ).fetchone()
            try:
                version = 0 if row is None else int(row[0])
            except ValueError:
                raise SchemaVersionError(
                    f"the SQLite store at {self.path} has an unreadable schema version {row[0]!r}"
                ) from None
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the SQLite store at {self.path} has schema version {version}, written by "
                    f"a newer afterwork; this one knows versions up to {SCHEMA_VERSION}. "
                    "Upgrade afterwork (stores are never migrated backwards).",
                    version=version,
                    supported=SCHEMA_VERSION,
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
                logger.info("SQLite store %s migrated to schema version %d", self.path, step + 1)
            if version != SCHEMA_VERSION:
                conn.execute(
                    "INSERT INTO afterwork_meta (name, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- transactions --------------------------------------------------------------------

    async def _write(self, fn: Callable[[Tx], T], *, inline: bool = False) -> T:
        """Run ``fn`` in a write transaction; ``inline``: a short one (see ``_sqlite_db``)."""
        result, tx = await self._db.write(lambda conn: self.run_in(conn, fn), inline=inline)
        self.committed(tx)
        return result

    def run_in(self, conn: Connection, fn: Callable[[Tx], T]) -> tuple[T, Tx]:
        """Run ``fn`` in the transaction open on ``conn``, then write the events it made.

        The store's own transactions and a transactional enqueue (through the app's
        connection, see ``_sqlite_tx``) both go through here: the events are rows of the
        same transaction, so they exist if and only if it commits.
        """
        tx = Tx(conn, self._clock())
        result = fn(tx)
        if tx.events:
            conn.executemany(INSERT_EVENT, tx.events)
            self._trim_events(conn, len(tx.events))
        return result, tx

    def committed(self, tx: Tx) -> None:
        """``tx`` committed: tell this process's event readers and idle workers."""
        if tx.events:
            self._pump.poke()
        if tx.wake:
            self._work.notify()
            self._signals.poke()  # and the other processes' workers

    def _trim_events(self, conn: Connection, written: int) -> None:
        before = self._events_written
        self._events_written += written
        step = max(self._event_retention // 10, 1)
        if before // step != self._events_written // step:
            conn.execute(
                "DELETE FROM afterwork_events WHERE id <= "
                "(SELECT max(id) FROM afterwork_events) - ?",
                (self._event_retention,),
            )

    # -- the Backend protocol ------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        inline = len(jobs) <= _INLINE_ROWS  # one request's jobs: no thread hop
        return await self._write(lambda tx: insert_jobs(tx, jobs), inline=inline)

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
        """Create ``jobs`` inside the app's own transaction on this store's file.

        ``connection`` is a SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` on the
        ``aiosqlite`` driver whose database is this store's file. The job rows and their
        events are written through it, in its transaction: they exist if and only if it
        commits, and this process's workers are woken after the commit (other processes
        find the jobs at their next poll). See ``docs/transactions.md``.

        Raises:
            EnqueueError: ``connection`` is of another kind, closed, in autocommit mode, or
                on another database than this store's file; nothing was written.
        """
        if not self._db.is_open:
            raise BackendUnavailable("the SQLite store is closed; open it first")
        return await enqueue_in(self, connection, jobs)

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        token = os.urandom(16).hex()

        def start(tx: Tx) -> Job:
            created = tx.insert(job, worker=worker, token=token, lease_ttl=lease_ttl)
            if created.status is JobStatus.RUNNING and created.worker == worker:
                self._saw_lease(created, token)
            return created

        return Claim(await self._write(start, inline=True), token)

    async def write_local(self, records: Sequence[LocalRecord]) -> None:
        """Write the jobs run in this process whose rows were kept back (``writebehind``),
        in one transaction, each at the times it really started and ended."""
        from ._sqlite_local import write_local_rows

        # Not inline: nothing waits for it, and on the thread it runs beside the requests.
        await self._write(lambda tx: write_local_rows(tx, records))

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
        if limits or rates:
            return await self._claim_limited(
                worker,
                queues=queues,
                limit=limit,
                lease_ttl=lease_ttl,
                exclude_tasks=exclude_tasks,
                limits=limits or {},
                rates=rates or {},
            )
        self._flow_skipped = self._conc_skipped = False
        self._rate_next = None
        excluded = list(exclude_tasks)
        not_in = f" AND task NOT IN ({', '.join('?' * len(excluded))})" if excluded else ""
        order = " ORDER BY priority DESC, run_at, seq LIMIT ?"
        # INDEXED BY pins the partial indexes: without ANALYZE statistics the planner would
        # pick the (status, id) index and sort the whole backlog on every claim.
        every_queue = (
            f"SELECT priority, run_at, seq, {COLS} FROM afterwork_jobs"
            f" INDEXED BY afterwork_jobs_ready_all WHERE status = 'queued'{not_in}{order}"
        )
        one_queue = (
            f"SELECT priority, run_at, seq, {COLS} FROM afterwork_jobs"
            " INDEXED BY afterwork_jobs_ready"
            f" WHERE status = 'queued' AND queue = ?{not_in}{order}"
        )

        def claim(tx: Tx) -> list[Claim]:
            conn, now = tx.conn, tx.now
            # Delayed jobs and retries that fell due join the queue in the same step: the
            # set-based form of ``life.promote``, whose change (the status alone, no
            # event) does not depend on the record.
            conn.execute(
                "UPDATE afterwork_jobs INDEXED BY afterwork_jobs_due SET status = 'queued'"
                " WHERE status = 'scheduled' AND run_at <= ?",
                (now,),
            )
            candidates: list[Any] = []
            held = paused_queues(conn)
            if queues is None:
                query, head = without_paused(every_queue, held)
                candidates = list(conn.execute(query, (*head, *excluded, limit)).fetchall())
            else:
                # One indexed range per queue, merged here: never a sort over a backlog.
                for queue in dict.fromkeys(q for q in queues if q not in held):
                    candidates += conn.execute(one_queue, (queue, *excluded, limit)).fetchall()
                candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
            claims: list[Claim] = []
            for row in candidates[:limit]:
                job, problems = load(row[3:])
                if problems:
                    tx.quarantine(job)
                    continue
                token = os.urandom(16).hex()
                change = life.claim(job, worker=worker, now=now, lease_ttl=lease_ttl)
                claimed = tx.apply(job, change, token=token, lease_ttl=lease_ttl)
                assert claimed is not None
                self._saw_lease(claimed, token)
                claims.append(Claim(claimed, token))
            return claims

        return await self._write(claim, inline=limit <= _INLINE_ROWS)

    async def _claim_limited(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        exclude_tasks: Collection[str],
        limits: Mapping[str, FlowLimit],
        rates: Mapping[str, RateLimit],
    ) -> list[Claim]:
        """A claim that passes over jobs whose flow group is at its fleet-wide limit
        (running jobs, or starts in a rate limit's window).

        Reads first (the running jobs of limited tasks, then the ready jobs page by page,
        skipping full groups), writes after: one transaction, as the plain claim.
        """
        excluded = list(exclude_tasks)
        not_in = f" AND task NOT IN ({', '.join('?' * len(excluded))})" if excluded else ""
        order = " ORDER BY priority DESC, run_at, seq LIMIT ? OFFSET ?"
        every_queue = (
            f"SELECT priority, run_at, seq, {COLS} FROM afterwork_jobs"
            f" INDEXED BY afterwork_jobs_ready_all WHERE status = 'queued'{not_in}{order}"
        )
        one_queue = (
            f"SELECT priority, run_at, seq, {COLS} FROM afterwork_jobs"
            " INDEXED BY afterwork_jobs_ready"
            f" WHERE status = 'queued' AND queue = ?{not_in}{order}"
        )

        def claim(tx: Tx) -> list[Claim]:
            conn, now = tx.conn, tx.now
            groups = Groups(limits, rates, conn=conn, now=now)
            conn.execute(
                "UPDATE afterwork_jobs INDEXED BY afterwork_jobs_due SET status = 'queued'"
                " WHERE status = 'scheduled' AND run_at <= ?",
                (now,),
            )
            groups.count_running(conn)
            held = paused_queues(conn)
            # One indexed range per queue (or across them all), merged here.
            scans = [without_paused(every_queue, held)] if queues is None else []
            scans += [(one_queue, (q,)) for q in dict.fromkeys(queues or ()) if q not in held]
            candidates: list[Any] = []
            for query, head in scans:

                def fetch(n: int, at: int, query: str = query, head: tuple[str, ...] = head) -> Any:
                    return conn.execute(query, (*head, *excluded, n, at)).fetchall()

                candidates += groups.pick(fetch, limit)
            candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
            claims: list[Claim] = []
            for row in candidates:
                if len(claims) >= limit:
                    break
                if not groups.admit(row):
                    continue
                job, problems = load(row[3:])
                if problems:
                    tx.quarantine(job)
                    continue
                token = os.urandom(16).hex()
                change = life.claim(job, worker=worker, now=now, lease_ttl=lease_ttl)
                claimed = tx.apply(job, change, token=token, lease_ttl=lease_ttl)
                assert claimed is not None
                self._saw_lease(claimed, token)
                claims.append(Claim(claimed, token))
            groups.write_starts()
            self._flow_skipped = groups.skipped or groups.rate_next is not None
            self._conc_skipped = groups.skipped
            self._rate_next = groups.rate_next
            return claims

        return await self._write(claim, inline=limit <= _INLINE_ROWS)

    def rate_next(self) -> float | None:
        """When a job the last claim passed over for a rate limit may start (store time)."""
        return self._rate_next

    async def rate_starts(self, group: str, rate: RateLimit) -> list[float]:
        """The recorded starts of a rate group still within its window."""
        now = self._clock()
        return await self._db.read(lambda conn: read_starts(conn, group, now, rate))

    async def begin(self, leases: Sequence[Lease]) -> list[Job | None]:
        if not leases:
            return []

        def begin(tx: Tx) -> list[Job | None]:
            begun: list[Job | None] = []
            for lease in leases:
                job, held = tx.held(lease.job_id)
                change = (
                    None
                    if job is None
                    else life.begin(job, held=held, token=lease.token, now=tx.now)
                )
                started = None if job is None else tx.apply(job, change)
                if started is not None and change is not None and change.event == "started":
                    tx.conn.execute(STAMP_START, (started.started_at, lease.job_id))
                begun.append(started)
            return begun

        # Starts ride in the same group commit as finishes: a slot freed by a finish is
        # usually taken by a start in the next transaction.
        result: list[Job | None] = await self._grouped(begin)
        return result

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply()

        def heartbeat(tx: Tx) -> HeartbeatReply:
            lost: set[str] = set()
            cancel: set[str] = set()
            for lease in leases:
                job, held = tx.held(lease.job_id)
                renewed = (
                    None
                    if job is None
                    else life.heartbeat(
                        job, held=held, token=lease.token, now=tx.now, lease_ttl=lease_ttl
                    )
                )
                if job is None or renewed is None:
                    lost.add(lease.job_id)
                    continue
                tx.save(job, renewed, lease_ttl=lease_ttl)
                self._saw_lease(renewed, lease.token)
                if renewed.cancel_requested:
                    cancel.add(lease.job_id)
            return HeartbeatReply(lost=frozenset(lost), cancel=frozenset(cancel))

        return await self._write(heartbeat)

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        status = outcome.status
        if status not in TERMINAL_STATUSES and status not in (
            JobStatus.SCHEDULED,
            JobStatus.QUEUED,
        ):
            raise ValueError(f"not an outcome: {status!r}")

        def finish(tx: Tx) -> Job | None:
            job, held = tx.held(lease.job_id)
            if job is None:
                return None
            change = life.finish(job, held=held, token=lease.token, outcome=outcome, now=tx.now)
            return tx.apply(job, change)

        result: Job | None = await self._grouped(finish)
        if result is not None and self._conc_skipped:
            self._work.notify()  # a slot of a fleet limit is free: claim again
        return result

    async def _grouped(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction shared with the calls made in the same turn.

        Finishes and starts issued together share one transaction (group commit); each
        is still fenced by its own token.
        """
        loop = asyncio.get_running_loop()
        if self._finish_loop not in (None, loop):
            # Another event loop is group-committing: its futures are not ours to settle.
            return await self._write(fn)
        future: asyncio.Future[Any] = loop.create_future()
        self._finishes.append((fn, future))
        if self._finisher is None or self._finisher.done():
            self._finish_loop = loop
            self._finisher = loop.create_task(self._flush_finishes())
        result: T = await future
        return result

    async def _flush_finishes(self) -> None:
        # One loop turn first: the jobs that end in this turn free their slots before their
        # finishes are queued, and the starts of the jobs that take them join this batch.
        await asyncio.sleep(0)
        try:
            while self._finishes:
                batch, self._finishes = (
                    self._finishes[:_FINISH_BATCH],
                    self._finishes[_FINISH_BATCH:],
                )

                def run(tx: Tx, batch: list[_Pending] = batch) -> list[Any]:
                    return [fn(tx) for fn, _ in batch]

                try:
                    results = await self._write(run, inline=len(batch) <= _INLINE_ROWS)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._finish_loop = None

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        def set_progress(tx: Tx) -> bool:
            job, held = tx.held(lease.job_id)
            if job is None:
                return False
            change = life.progress(
                job, held=held, token=lease.token, progress=progress, message=message
            )
            return tx.apply(job, change) is not None

        return await self._write(set_progress)

    def _saw_lease(self, job: Job, token: str) -> None:
        """This process wrote the lease: it has seen it since now."""
        assert job.lease_expires_at is not None
        self._seen[job.id] = ((token, job.lease_expires_at), self._monotonic())

    def _expired_leases(self, conn: Connection, now: float) -> list[str]:
        """Leases this process has seen unchanged for as long as they were taken for.

        The store has no clock of its own, and the processes sharing the file may not
        agree on the time: a lease is judged by the passing of *this* process's monotonic
        clock since it first saw the lease as it is (a renewal changes it). So a process
        whose wall clock runs ahead never takes back a live worker's job; a process that
        just started waits one lease before it takes anything back. Leases written before
        ``lease_ttl`` was stored fall back to this process's wall clock.
        """
        mono = self._monotonic()
        rows = conn.execute(
            "SELECT id, token, lease_expires_at, lease_ttl FROM afterwork_jobs"
            " INDEXED BY afterwork_jobs_leases WHERE status = 'running'"
            " ORDER BY lease_expires_at, id"
        ).fetchall()
        expired: list[str] = []
        seen: dict[str, tuple[tuple[str, float], float]] = {}
        for job_id, token, stamp, ttl in rows:
            lease = (token, stamp)
            previous = self._seen.get(job_id)
            since = previous[1] if previous is not None and previous[0] == lease else mono
            seen[job_id] = (lease, since)
            if ttl is None:
                if stamp <= now:
                    expired.append(job_id)
            elif mono - since >= ttl:
                expired.append(job_id)
        self._seen = seen  # leases that ended are forgotten
        return expired

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        def recover(tx: Tx) -> list[Job]:
            recovered: list[Job] = []
            for job_id in self._expired_leases(tx.conn, tx.now):
                job, _ = tx.held(job_id)
                if job is None or job.status is not JobStatus.RUNNING:
                    continue
                change = life.recover(job, now=tx.now, max_recoveries=max_recoveries)
                back = tx.apply(job, change)
                assert back is not None
                recovered.append(back)
            return recovered

        return await self._write(recover)

    async def get(self, job_id: str) -> Job | None:
        return await self._db.read(
            lambda conn: load_one(conn.execute(f"{SELECT} WHERE id = ?", (job_id,)).fetchone())
        )

    async def cancel(self, job_id: str) -> Job | None:
        def cancel(tx: Tx) -> Job | None:
            job = tx.get(job_id)
            if job is None:
                return None
            return tx.apply(job, life.cancel(job, now=tx.now)) or job

        return await self._write(cancel)

    def _due_in(self, conn: sqlite3.Connection, queues: Sequence[str] | None) -> float | None:
        """0 if a job is ready in ``queues``, else seconds until the next delayed one is due.

        Paused queues are left out: their jobs are not work this worker may start.
        """
        where = ""
        params: tuple[str, ...] = ()
        held = paused_queues(conn)
        if queues is not None:
            queues = [q for q in queues if q not in held]
            if not queues:
                return None
            where = f" AND queue IN ({', '.join('?' * len(queues))})"
            params = tuple(queues)
        elif held:
            where = f" AND queue NOT IN ({', '.join('?' * len(held))})"
            params = tuple(sorted(held))
        ready = conn.execute(
            f"SELECT 1 FROM afterwork_jobs WHERE status = 'queued'{where} LIMIT 1", params
        ).fetchone()
        if ready is not None:
            return 0.0
        row = conn.execute(
            "SELECT min(run_at) FROM afterwork_jobs INDEXED BY afterwork_jobs_due"
            f" WHERE status = 'scheduled'{where}",
            params,
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return max(float(row[0]) - self._clock(), 0.0)

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        """Return when work may be due, or after ``timeout`` seconds.

        This process's own writes wake it at once; so do other processes' (a datagram on
        a Unix socket next to the database file, ``_sqlite_wake.py``). Polling stays as
        the safety net: every ``poll_interval`` (50 ms) at first, backing off to
        ``max_poll_interval`` (500 ms) while nothing happens.
        """
        if queues is not None and not queues:
            queues = None
        deadline = time.monotonic() + max(timeout, 0.0)
        interval = self._poll_interval
        if self._flow_skipped:
            # The last claim passed over jobs at a fleet limit: they are queued, so the
            # check below would return at once and spin. Wait for a finish here, or poll
            # (other processes' finishes), backing off while the limit holds.
            # A rate limit: sleep until its next start is allowed (or a new job comes).
            self._flow_wait = min(self._flow_wait * 2, self._max_poll_interval)
            wait = max(timeout, 0.0)
            if self._conc_skipped:
                wait = min(wait, self._flow_wait)
            if self._rate_next is not None:
                wait = min(wait, max(self._rate_next - self._clock(), 0.0))
            await self._work.wait(self._work.ticket(), wait)
            return
        self._flow_wait = self._poll_interval / 2
        self._signals.listen(self._remote_wake)  # other processes' writes wake us too
        while True:
            ticket, remote = self._work.ticket(), self._remote_wakes
            due_in = await self._db.read(lambda conn: self._due_in(conn, queues), inline=True)
            if due_in is not None and due_in <= 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(remaining, interval)
            if due_in is not None:
                wait = min(wait, due_in)
            if await self._work.wait(ticket, wait):
                if not self._db.is_open:
                    return
                if self._work.ticket() - ticket == self._remote_wakes - remote:
                    continue  # only other processes wrote: look whether it is work for us
                return
            if not self._db.is_open:
                return
            interval = min(interval * 2, self._max_poll_interval)

    def _remote_wake(self) -> None:
        """Another process committed a write that made some job due (maybe not ours)."""
        self._remote_wakes += 1
        self._work.notify()

    async def publish(self, channel: str, data: str) -> None:
        """Append the message to the events table: every process's pump delivers it."""

        def run(conn: sqlite3.Connection) -> None:
            row = (MESSAGE_KIND, "", channel, "", "queued", 0, self._clock(), None, data)
            conn.execute(INSERT_EVENT, row)
            self._trim_events(conn, 1)

        await self._db.write(run)
        self._pump.poke()

    async def subscribe(self, channel: str) -> MessageStream:
        """Messages on ``channel`` committed from now on, by this or any other process."""
        return self._pump.subscribe_channel(channel)

    @property
    def event_retention(self) -> int:
        """How many recent events the events table keeps (``events(since=id)`` resumes)."""
        return self._event_retention

    def events(self, since: str | None = None) -> EventStream:
        """Events from now on; with ``since`` (an event id), first the kept ones after it.

        If events after ``since`` were trimmed, a ``truncated`` marker comes first instead.
        """
        return self._pump.subscribe(since)
