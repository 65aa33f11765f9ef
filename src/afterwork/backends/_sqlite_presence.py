"""The SQLite backend's :class:`~afterwork.backends.base.WorkerPresence` half."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from .base import Clock, WorkerInfo

if TYPE_CHECKING:
    from ._sqlite_db import Database

__all__ = ("PresenceMixin",)


class PresenceMixin:
    """Workers' presence records in ``afterwork_workers`` (expired rows pruned on read)."""

    _db: Database
    _clock: Clock

    async def announce_worker(self, info: WorkerInfo) -> None:
        data = json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM afterwork_workers WHERE expires_at <= ?", (info.last_seen,))
            conn.execute(
                "INSERT INTO afterwork_workers (id, info, started_at, expires_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET info = excluded.info, expires_at = excluded.expires_at",
                (info.id, data, info.started_at, info.expires_at),
            )

        await self._db.write(upsert)

    async def remove_worker(self, worker_id: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM afterwork_workers WHERE id = ?", (worker_id,))
        )

    async def list_workers(self) -> list[WorkerInfo]:
        now = self._clock()

        def live(conn: sqlite3.Connection) -> list[tuple[str]]:
            rows: list[tuple[str]] = conn.execute(
                "SELECT info FROM afterwork_workers WHERE expires_at > ? ORDER BY started_at, id",
                (now,),
            ).fetchall()
            return rows

        workers: list[WorkerInfo] = []
        for (text,) in await self._db.read(live):
            try:
                workers.append(WorkerInfo.from_dict(json.loads(text)))
            except (ValueError, TypeError, KeyError):
                continue  # a record this version cannot read: presence is advisory
        return workers
