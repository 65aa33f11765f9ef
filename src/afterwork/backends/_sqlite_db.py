"""One SQLite connection in one dedicated thread, shared by every event loop of a process.

Each call hands a whole function to the thread (``await db.write(fn)``): the function runs
inside ``BEGIN IMMEDIATE`` … ``COMMIT``, so a transaction is one hop to the thread, is
never interleaved with another coroutine's statements, and takes SQLite's write lock up
front. A deferred transaction that reads and then writes can fail with
``SQLITE_BUSY_SNAPSHOT``, which ``busy_timeout`` does not retry; an immediate one cannot.

"database is locked" never reaches the caller: ``busy_timeout`` waits inside SQLite, and
past it the whole transaction is retried with jittered backoff until ``lock_timeout``,
after which :class:`~afterwork.exceptions.BackendUnavailable` is raised. Every other
driver error is re-raised as :class:`~afterwork.exceptions.BackendError` ``from`` it.

Results come back through ``concurrent.futures``, so any event loop (an app's, or the
portal loop of a sync caller) can await them.

A short write the store marks ``inline`` (one request's enqueue, a claim, a group of
finishes) skips the hop when it can: if the connection is free and SQLite's write lock
can be had at once, the caller's thread runs the transaction itself. A thread hop costs
more than such a transaction (two wake-ups and a GIL hand-over each way, worse on a busy
machine); the caller's event loop is held for the length of one short transaction
instead. Locked by another connection, or busy here, it goes to the thread as before.
Only with ``synchronous`` OFF or NORMAL (no fsync at commit).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..exceptions import BackendError, BackendUnavailable, ConfigurationError

__all__ = ("Database", "connect", "is_busy")

logger: logging.Logger = logging.getLogger(__name__)

T = TypeVar("T")

#: SQLite 3.35 brought ``RETURNING``; 3.37 brought ``STRICT`` tables.
MIN_SQLITE = (3, 37, 0)

_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means another connection holds a lock (worth retrying)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


def connect(path: str, *, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, with a busy timeout."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigurationError(
            f"the SQLite backend needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; "
            f"this Python links SQLite {sqlite3.sqlite_version}"
        )
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"cannot open the SQLite store at {path!r}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
    except sqlite3.Error as exc:
        conn.close()
        raise BackendUnavailable(f"cannot open the SQLite store at {path!r}: {exc}") from exc
    return conn


class Database:
    """A connection owned by one thread; transactions are functions run on that thread."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        lock_timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.lock_timeout = lock_timeout
        self.synchronous = synchronous
        self.busy_retries = 0
        """Transactions retried because the store was locked (for benchmarks and tests)."""
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._using = threading.Lock()
        """Held by whichever thread runs statements on the connection (thread or inline)."""
        self._inline = synchronous.upper() in ("OFF", "NORMAL")
        self.inline_writes = 0
        """Transactions run on the caller's thread (for benchmarks and tests)."""

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Start the thread, connect, and run ``setup`` (pragmas, migrations) there."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="afterwork-sqlite")

        def open_and_setup(_: sqlite3.Connection | None) -> None:
            if self._conn is None:
                self._conn = connect(
                    self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous
                )
            self._retrying(lambda: setup(self._require()))

        await self._submit(open_and_setup)

    async def aclose(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return

        def close(_: sqlite3.Connection | None) -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        try:
            await asyncio.wrap_future(executor.submit(close, None))
        finally:
            executor.shutdown(wait=False)

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    # -- running work --------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """Run ``fn(conn)`` in ``BEGIN IMMEDIATE`` … ``COMMIT``, retried while locked.

        ``inline``: a short transaction, run on the caller's thread if the connection is
        free and the write lock is (see the module's docstring). ``fn`` may run twice: once
        here, found locked and rolled back, then on the thread (as any retried ``fn``).
        """
        if inline and self._inline:
            ran, result = self._try_inline(lambda conn: self._transaction(fn), begin=True)
            if ran:
                return result  # type: ignore[return-value]  # ran: fn's result
        return await self._submit(lambda conn: self._retrying(lambda: self._transaction(fn)))

    def _try_inline(
        self, fn: Callable[[sqlite3.Connection], T], *, begin: bool
    ) -> tuple[bool, T | None]:
        """``(True, result)`` if ``fn(conn)`` ran here; ``(False, None)`` if not (the
        connection is in use, or the store is locked: ``fn`` rolled back its transaction).
        ``begin``: it writes (counted in ``inline_writes``)."""
        if self._executor is None or not self._using.acquire(blocking=False):
            return False, None
        try:
            conn = self._conn
            if conn is None:
                return False, None
            conn.execute("PRAGMA busy_timeout = 0")  # locked elsewhere: to the thread, at once
            try:
                result = fn(conn)
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    return False, None  # rolled back; the thread waits for the lock
                raise BackendError(f"SQLite error on {self.path!r}: {exc}") from exc
            except (BackendError, ConfigurationError):
                raise
            except sqlite3.Error as exc:
                raise BackendError(f"SQLite error on {self.path!r}: {exc}") from exc
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self.inline_writes += begin
            return True, result
        finally:
            self._using.release()

    async def read(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """Run ``fn(conn)`` outside a write transaction (a consistent WAL snapshot).

        ``inline``: a short read, run on the caller's thread if the connection is free.
        """

        def snapshot(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        if inline:
            ran, result = self._try_inline(snapshot, begin=False)
            if ran:
                return result  # type: ignore[return-value]  # ran: fn's result

        def run(conn: sqlite3.Connection) -> T:
            return self._retrying(lambda: snapshot(conn))

        return await self._submit(run)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise BackendUnavailable("the SQLite store is closed; open it first")

        def call() -> T:
            with self._using:
                conn = self._conn
                try:
                    return fn(conn)  # type: ignore[arg-type]  # None only while opening
                except (BackendError, ConfigurationError):
                    raise
                except sqlite3.Error as exc:
                    raise BackendError(f"SQLite error on {self.path!r}: {exc}") from exc

        try:
            future = executor.submit(call)
        except RuntimeError as exc:  # shut down by a concurrent aclose()
            raise BackendUnavailable("the SQLite store is closed") from exc
        return await asyncio.wrap_future(future)

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendUnavailable("the SQLite store is closed")
        return self._conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._require()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _retrying(self, attempt: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(
                        f"the SQLite store at {self.path!r} stayed locked for "
                        f"{self.lock_timeout:g}s; another process holds a long write lock",
                        may_have_applied=False,  # the transaction was rolled back
                    ) from exc
                self.busy_retries += 1
                logger.debug("SQLite store locked; retrying in %.3fs", delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)
