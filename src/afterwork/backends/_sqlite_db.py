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

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in ``BEGIN IMMEDIATE`` … ``COMMIT``, retried while locked."""
        return await self._submit(lambda conn: self._retrying(lambda: self._transaction(fn)))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` outside a write transaction (a consistent WAL snapshot)."""

        def run(conn: sqlite3.Connection) -> T:
            def attempt() -> T:
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")

            return self._retrying(attempt)

        return await self._submit(run)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise BackendUnavailable("the SQLite store is closed; open it first")

        def call() -> T:
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
