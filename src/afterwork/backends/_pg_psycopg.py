"""Transactional enqueue through psycopg (v3): the store's SQL on an app's psycopg connection.

The PostgreSQL store talks asyncpg (``$1`` placeholders, ``fetchval`` and friends). An app
on SQLAlchemy's ``postgresql+psycopg`` driver (or on psycopg itself) hands
``enqueue(connection=…)`` a psycopg ``AsyncConnection``; :class:`PsycopgConnection` lends it
the few asyncpg methods the enqueue path uses, rewriting placeholders to psycopg's ``%s``.
The statements run in the app's transaction, on its connection: nothing here commits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..exceptions import BackendError, BackendUnavailable, EnqueueError

__all__ = ("PsycopgConnection", "as_psycopg", "translate")

_MARK = re.compile(r"\$(\d+)")


def translate(sql: str) -> tuple[str, list[int]]:
    """``sql`` with ``$n`` placeholders as ``%s``, and which argument each ``%s`` takes."""
    order: list[int] = []

    def mark(match: re.Match[str]) -> str:
        order.append(int(match.group(1)) - 1)
        return "%s"

    return _MARK.sub(mark, sql.replace("%", "%%")), order


def as_psycopg(connection: Any) -> PsycopgConnection | None:
    """``connection`` wrapped, if it is a psycopg ``AsyncConnection`` (else ``None``)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is optional
        return None
    if isinstance(connection, psycopg.AsyncConnection):
        return PsycopgConnection(connection)
    if isinstance(connection, psycopg.Connection):
        raise EnqueueError(
            "the PostgreSQL store enqueues through an async connection: use psycopg's "
            "AsyncConnection (or SQLAlchemy's AsyncSession on postgresql+psycopg)"
        )
    return None


def _error(exc: Exception) -> Exception:
    import psycopg

    if isinstance(exc, psycopg.InterfaceError):
        return EnqueueError(f"the connection given to enqueue cannot be used: {exc}")
    if isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.QueryCanceled
    ):
        error = BackendUnavailable(f"PostgreSQL cannot be reached: {exc!r}")
        error.may_have_applied = False  # the app's transaction has not committed
        return error
    return BackendError(f"PostgreSQL failed: {exc}")


class PsycopgConnection:
    """The asyncpg-style methods the store's enqueue path calls, on a psycopg connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def is_closed(self) -> bool:
        return bool(self.connection.closed)

    def is_in_transaction(self) -> bool:
        """In the app's transaction: one is open, or the next statement opens one that the
        app commits (psycopg's default, ``autocommit=False``)."""
        from psycopg.pq import TransactionStatus

        status = self.connection.info.transaction_status
        return status != TransactionStatus.IDLE or not self.connection.autocommit

    def transaction(self) -> Any:
        return self.connection.transaction()

    async def _run(self, sql: str, args: Sequence[Any], many: Iterable[Sequence[Any]] = ()) -> Any:
        import psycopg

        text, order = translate(sql)
        try:
            cursor = self.connection.cursor()
            try:
                if many:
                    await cursor.executemany(text, [[row[i] for i in order] for row in many])
                    return cursor.statusmessage or "", []
                await cursor.execute(text, [args[i] for i in order])
                rows = await cursor.fetchall() if cursor.description is not None else []
                return cursor.statusmessage or "", rows
            finally:
                await cursor.close()
        except psycopg.Error as exc:
            raise _error(exc) from exc

    async def execute(self, sql: str, *args: Any) -> str:
        status, _ = await self._run(sql, args)
        return str(status)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            await self._run(sql, (), many=rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        _, rows = await self._run(sql, args)
        return [tuple(row) for row in rows]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]
