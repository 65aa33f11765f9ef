"""The PostgreSQL store's :class:`~afterwork.backends.base.Leases` and
:class:`~afterwork.backends.base.HistoryStore` halves (tables ``leases`` and ``history``).

Translated from the SQLite store's (``_sqlite_leases``, ``_sqlite_history``): each method
is one statement or one transaction; lease fencing is a compare on the token in the
``WHERE`` clause; a history flush locks the rows it adds to (``FOR UPDATE``), adds in
Python and writes them back, all or none.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._history_codec import dump_buckets, load_buckets
from .base import HistoryRow, LeaseInfo

if TYPE_CHECKING:
    import asyncpg

    from ._pg_rows import Tx

__all__ = ("HistoryMixin", "LeasesMixin")

T = TypeVar("T")

_FIELDS = (
    "minute, task, queue, succeeded, failed, retried, run_sum, run_buckets, wait_sum, wait_buckets"
)


class _Store:
    _s: str

    def now(self) -> float:
        raise NotImplementedError

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        raise NotImplementedError


def _count(status: str) -> int:
    """The row count of an asyncpg command status (``INSERT 0 1``, ``UPDATE 1``…)."""
    return int(status.split()[-1])


class LeasesMixin(_Store):
    async def acquire_lease(self, name: str, holder: str, *, ttl: float) -> str | None:
        token = os.urandom(16).hex()

        async def take(conn: asyncpg.Connection) -> str | None:
            now = self.now()
            status = await conn.execute(
                f"INSERT INTO {self._s}.leases (name, token, holder, acquired_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET"
                " token = excluded.token, holder = excluded.holder,"
                " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at"
                " WHERE leases.expires_at <= $4",
                name,
                token,
                holder,
                now,
                now + ttl,
            )
            return token if _count(status) == 1 else None

        return await self._read(take)

    async def renew_lease(self, name: str, token: str, *, ttl: float) -> bool:
        async def renew(conn: asyncpg.Connection) -> bool:
            now = self.now()
            status = await conn.execute(
                f"UPDATE {self._s}.leases SET expires_at = $1"
                " WHERE name = $2 AND token = $3 AND expires_at > $4",
                now + ttl,
                name,
                token,
                now,
            )
            return _count(status) == 1

        return await self._read(renew)

    async def release_lease(self, name: str, token: str) -> bool:
        async def release(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                f"DELETE FROM {self._s}.leases WHERE name = $1 AND token = $2", name, token
            )
            return _count(status) == 1

        return await self._read(release)

    async def list_leases(self) -> list[LeaseInfo]:
        now = self.now()

        async def held(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT name, holder, acquired_at, expires_at FROM {self._s}.leases"
                    " WHERE expires_at > $1 ORDER BY name",
                    now,
                )
            )

        return [
            LeaseInfo(name=name, holder=holder, acquired_at=acquired, expires_at=expires)
            for name, holder, acquired, expires in await self._read(held)
        ]


def _row(record: Sequence[Any]) -> HistoryRow:
    return HistoryRow(
        minute=float(record[0]),
        task=str(record[1]),
        queue=str(record[2]),
        succeeded=int(record[3]),
        failed=int(record[4]),
        retried=int(record[5]),
        run_sum=float(record[6]),
        run_buckets=load_buckets(record[7]),
        wait_sum=float(record[8]),
        wait_buckets=load_buckets(record[9]),
    )


class HistoryMixin(_Store):
    async def record_history(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return

        async def add(tx: Tx) -> None:
            conn = tx.conn
            for row in rows:
                # Insert an empty row first so concurrent flushes of a new minute serialize
                # on its lock instead of racing to create it.
                await conn.execute(
                    f"INSERT INTO {self._s}.history (minute, task, queue) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING",
                    *row.key,
                )
                held = await conn.fetchrow(
                    f"SELECT {_FIELDS} FROM {self._s}.history"
                    " WHERE minute = $1 AND task = $2 AND queue = $3 FOR UPDATE",
                    *row.key,
                )
                total = row if held is None else _row(tuple(held)).merged(row)
                await conn.execute(
                    f"UPDATE {self._s}.history SET succeeded = $4, failed = $5, retried = $6,"
                    " run_sum = $7, run_buckets = $8, wait_sum = $9, wait_buckets = $10"
                    " WHERE minute = $1 AND task = $2 AND queue = $3",
                    total.minute,
                    total.task,
                    total.queue,
                    total.succeeded,
                    total.failed,
                    total.retried,
                    total.run_sum,
                    dump_buckets(total.run_buckets),
                    total.wait_sum,
                    dump_buckets(total.wait_buckets),
                )

        await self._write(add)

    async def read_history(
        self,
        *,
        since: float,
        until: float,
        task: str | None = None,
        queue: str | None = None,
    ) -> list[HistoryRow]:
        sql = f"SELECT {_FIELDS} FROM {self._s}.history WHERE minute >= $1 AND minute < $2"
        params: list[Any] = [since, until]
        if task is not None:
            params.append(task)
            sql += f" AND task = ${len(params)}"
        if queue is not None:
            params.append(queue)
            sql += f" AND queue = ${len(params)}"
        sql += " ORDER BY minute, task, queue"

        async def read(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        return [_row(tuple(record)) for record in await self._read(read)]

    async def purge_history(self, *, before: float) -> None:
        async def purge(conn: asyncpg.Connection) -> None:
            await conn.execute(f"DELETE FROM {self._s}.history WHERE minute < $1", before)

        await self._read(purge)
