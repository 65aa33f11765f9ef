"""Transactional enqueue on the SQLite store: job rows written through the app's connection.

``await task.options(connection=session).enqueue(...)`` with a SQLAlchemy ``AsyncSession``
or ``AsyncConnection`` on the ``aiosqlite`` driver, whose database is the store's file.
The job rows and their events are built by :meth:`~._sqlite_rows.Tx.insert` and
:meth:`SQLiteBackend.run_in <afterwork.backends.sqlite.SQLiteBackend.run_in>`, the same
code as every other enqueue, and executed through the app's connection, inside its
transaction. So:

* they exist if and only if that transaction commits (a rollback takes them and their
  ``enqueued`` events away), and no other connection sees them before the commit;
* ``key=`` dedupe is the store's partial unique index: it sees committed jobs and the rows
  of this transaction (SQLite has one writer at a time, so no two transactions race);
* after the commit, this process's idle workers are woken and the event readers poked.
  A session's ``after_commit`` event says so; a bare connection's ``commit`` event fires
  *before* the driver commits, so the wake-up is queued behind the commit on aiosqlite's
  connection thread (one thread runs a connection's calls in order) and runs once that
  commit returned. Workers of other processes find the jobs at their next poll.

Holding the app's transaction open holds SQLite's write lock from the first write to the
commit: the store's own writers (claims, heartbeats) wait meanwhile (``docs/transactions.md``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import BackendError, EnqueueError
from ..job import Job
from ._sqlite_rows import Cursor, Tx
from .base import NewJob

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session as SASession
    from sqlalchemy.orm import SessionTransaction

    from .sqlite import SQLiteBackend

__all__ = ("enqueue_in", "insert_jobs")

logger: logging.Logger = logging.getLogger(__name__)

_KINDS = "a SQLAlchemy AsyncSession or AsyncConnection (sqlite+aiosqlite)"
_PENDING = "afterwork.pending_wakeups"

# Transactions of bare connections that wrote jobs, waiting for their commit or rollback.
_connection_pending: weakref.WeakKeyDictionary[SAConnection, list[_Wakeup]] = (
    weakref.WeakKeyDictionary()
)
_hooked: weakref.WeakSet[Any] = weakref.WeakSet()
_wakeups: set[asyncio.Task[None]] = set()


def insert_jobs(tx: Tx, jobs: Sequence[NewJob]) -> list[Job]:
    """Create ``jobs`` in ``tx`` (every enqueue's rows are built here, by ``Tx.insert``)."""
    return [tx.insert(new) for new in jobs]


class _Wakeup:
    """What to tell the store once the transaction that wrote ``tx`` commits."""

    __slots__ = ("store", "tx")

    def __init__(self, store: SQLiteBackend, tx: Tx) -> None:
        self.store = store
        self.tx = tx

    def fire(self) -> None:
        self.store.committed(self.tx)


class _AppConnection:
    """The app's SQLAlchemy connection as a :class:`~._sqlite_rows.Connection`.

    Statements go through ``exec_driver_sql``, so SQLAlchemy knows its transaction is in
    use (it begins one if none is, firing the app's ``begin`` hooks).
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: SAConnection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self._conn.exec_driver_sql(sql, tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        return self._conn.exec_driver_sql(sql, [tuple(row) for row in parameters])


async def enqueue_in(store: SQLiteBackend, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
    """Write ``jobs`` through ``connection`` in its transaction (see the module's docstring)."""
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # no SQLAlchemy: the object cannot be one of its connections
        raise EnqueueError(_unsupported(store, connection)) from None
    if isinstance(connection, AsyncSession):
        return await _in_session(store, connection, jobs)
    if isinstance(connection, AsyncConnection):
        return await _in_connection(store, connection, jobs)
    raise EnqueueError(_unsupported(store, connection))


def _write(
    store: SQLiteBackend, conn: SAConnection, jobs: Sequence[NewJob]
) -> tuple[list[Job], Tx]:
    from sqlalchemy.exc import DBAPIError

    _check(store, conn)
    try:
        return store.run_in(_AppConnection(conn), lambda tx: insert_jobs(tx, jobs))
    except DBAPIError as exc:
        raise BackendError(
            f"SQLite error while enqueuing through the app's connection to {store.path!r}: "
            f"{exc.orig}; roll the transaction back"
        ) from exc


async def _in_session(
    store: SQLiteBackend, session: AsyncSession, jobs: Sequence[NewJob]
) -> list[Job]:
    from sqlalchemy.exc import InvalidRequestError

    def run(sync_session: SASession) -> tuple[list[Job], Tx]:
        return _write(store, sync_session.connection(), jobs)

    try:
        created, tx = await session.run_sync(run)
    except InvalidRequestError as exc:  # closed for good, or a failed flush to roll back
        raise EnqueueError(f"the session cannot be used to enqueue: {exc}") from exc
    if tx.events or tx.wake:
        _after_session_commit(session.sync_session, _Wakeup(store, tx))
    return created


async def _in_connection(
    store: SQLiteBackend, connection: AsyncConnection, jobs: Sequence[NewJob]
) -> list[Job]:
    from sqlalchemy.exc import InvalidRequestError

    sync_connection = connection.sync_connection
    if sync_connection is None:
        raise EnqueueError("the connection has not been started: await engine.connect() first")
    if connection.closed:
        raise EnqueueError("the connection is closed: enqueue through an open one")
    try:
        created, tx = await connection.run_sync(lambda conn: _write(store, conn, jobs))
    except InvalidRequestError as exc:
        raise EnqueueError(f"the connection cannot be used to enqueue: {exc}") from exc
    if tx.events or tx.wake:
        _after_connection_commit(sync_connection, _Wakeup(store, tx))
    return created


def _unsupported(store: SQLiteBackend, connection: Any) -> str:
    kind = f"{type(connection).__module__}.{type(connection).__qualname__}"
    return (
        f"the SQLite store at {store.path} enqueues in a transaction through {_KINDS} "
        f"on its own file, not through a {kind}"
    )


def _check(store: SQLiteBackend, conn: SAConnection) -> None:
    """Refuse a connection to another database, or one that would not hold a transaction."""
    dialect = conn.dialect
    if dialect.name != "sqlite" or dialect.driver != "aiosqlite":
        raise EnqueueError(
            f"the connection is to a {dialect.name}+{dialect.driver} database, not to the "
            f"SQLite store's file {store.path} (enqueue in a transaction needs {_KINDS})"
        )
    # A driver connection's main database never changes: checked once per connection
    # (``info`` lives as long as the pooled driver connection), not on every enqueue.
    checked = ("afterwork.store_file", store.path)
    if not conn.info.get(checked):
        _check_file(store, conn)
        conn.info[checked] = True
    driver = conn.connection.driver_connection
    if getattr(driver, "isolation_level", "") is None and not getattr(
        driver, "in_transaction", True
    ):
        raise EnqueueError(
            "the connection is in autocommit mode: there is no transaction to enqueue in "
            "(begin one, e.g. emit BEGIN from the engine's 'begin' event)"
        )


def _check_file(store: SQLiteBackend, conn: SAConnection) -> None:
    files = {row[1]: row[2] for row in conn.exec_driver_sql("PRAGMA database_list").fetchall()}
    main = files.get("main") or ""
    if not main:
        raise EnqueueError(
            "the connection is to an in-memory or temporary SQLite database, not to the "
            f"store's file {store.path}"
        )
    if not _same_file(main, store.path):
        raise EnqueueError(
            f"the connection is to the SQLite database {main}, not to the store's file "
            f"{store.path}: jobs can only be written in a transaction on the store's own file"
        )


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _after_session_commit(session: SASession, wakeup: _Wakeup) -> None:
    from sqlalchemy import event

    session.info.setdefault(_PENDING, []).append(wakeup)
    if session in _hooked:
        return
    _hooked.add(session)

    def after_commit(session: SASession) -> None:
        for pending in session.info.pop(_PENDING, ()):
            pending.fire()

    def after_transaction_end(session: SASession, transaction: SessionTransaction) -> None:
        # The outermost transaction ended without after_commit taking the wake-ups (a
        # rollback, or close() without a commit, which fires no after_rollback): drop them.
        if transaction.parent is None:
            session.info.pop(_PENDING, None)

    event.listen(session, "after_commit", after_commit)
    event.listen(session, "after_transaction_end", after_transaction_end)


def _after_connection_commit(conn: SAConnection, wakeup: _Wakeup) -> None:
    from sqlalchemy import event

    _connection_pending.setdefault(conn, []).append(wakeup)
    if conn in _hooked:
        return
    _hooked.add(conn)

    def commit(conn: SAConnection) -> None:
        pending = _connection_pending.pop(conn, [])
        if not pending:
            return
        # This runs before the driver's COMMIT. aiosqlite runs a connection's calls in
        # order on one thread, and the COMMIT is queued before the task below starts:
        # a call queued by the task returns only once the COMMIT has.
        driver = conn.connection.driver_connection
        task = asyncio.get_running_loop().create_task(_fire_after(driver, pending))
        _wakeups.add(task)
        task.add_done_callback(_wakeups.discard)

    def rollback(conn: SAConnection) -> None:
        _connection_pending.pop(conn, None)

    event.listen(conn, "commit", commit)
    event.listen(conn, "rollback", rollback)


async def _fire_after(driver: Any, pending: list[_Wakeup]) -> None:
    try:
        cursor = await driver.cursor()  # queued behind the COMMIT; runs no SQL
        await cursor.close()
    except Exception:  # the connection closed meanwhile: the commit is behind us anyway
        logger.debug("could not queue the wake-up behind the commit", exc_info=True)
    for wakeup in pending:
        wakeup.fire()
