"""The SQLite backend's :class:`~afterwork.backends.base.HistoryStore` half.

One row per ``(minute, task, queue)`` in ``afterwork_history`` (schema version 4); a flush
adds to the rows in one write transaction (read, add in Python, write back), so two
workers flushing the same minute both count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._history_codec import dump_buckets, load_buckets
from .base import HistoryRow

if TYPE_CHECKING:
    from ._sqlite_db import Database

__all__ = ("HistoryMixin",)

_FIELDS = (
    "minute, task, queue, succeeded, failed, retried, run_sum, run_buckets, wait_sum, wait_buckets"
)


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


class HistoryMixin:
    _db: Database

    async def record_history(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return

        def add(conn: sqlite3.Connection) -> None:
            for row in rows:
                held = conn.execute(
                    f"SELECT {_FIELDS} FROM afterwork_history"
                    " WHERE minute = ? AND task = ? AND queue = ?",
                    row.key,
                ).fetchone()
                total = row if held is None else _row(held).merged(row)
                conn.execute(
                    f"INSERT OR REPLACE INTO afterwork_history ({_FIELDS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
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
                    ),
                )

        await self._db.write(add)

    async def read_history(
        self,
        *,
        since: float,
        until: float,
        task: str | None = None,
        queue: str | None = None,
    ) -> list[HistoryRow]:
        sql = f"SELECT {_FIELDS} FROM afterwork_history WHERE minute >= ? AND minute < ?"
        params: list[Any] = [since, until]
        if task is not None:
            sql += " AND task = ?"
            params.append(task)
        if queue is not None:
            sql += " AND queue = ?"
            params.append(queue)
        sql += " ORDER BY minute, task, queue"

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        return [_row(record) for record in await self._db.read(read)]

    async def purge_history(self, *, before: float) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM afterwork_history WHERE minute < ?", (before,))
        )
