"""The SQLite backend's :class:`~afterwork.backends.base.Leases` half (``afterwork_leases``).

Each method is one ``BEGIN IMMEDIATE`` transaction, so processes sharing the file see a
lease change atomically; fencing is a compare on the token in the ``WHERE`` clause.
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

from .base import Clock, LeaseInfo

if TYPE_CHECKING:
    from ._sqlite_db import Database

__all__ = ("LeasesMixin",)


class LeasesMixin:
    _db: Database
    _clock: Clock

    async def acquire_lease(self, name: str, holder: str, *, ttl: float) -> str | None:
        token = os.urandom(16).hex()

        def take(conn: sqlite3.Connection) -> str | None:
            now = self._clock()
            cursor = conn.execute(
                "INSERT INTO afterwork_leases (name, token, holder, acquired_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET token = excluded.token,"
                " holder = excluded.holder, acquired_at = excluded.acquired_at,"
                " expires_at = excluded.expires_at WHERE afterwork_leases.expires_at <= ?",
                (name, token, holder, now, now + ttl, now),
            )
            return token if cursor.rowcount == 1 else None

        return await self._db.write(take)

    async def renew_lease(self, name: str, token: str, *, ttl: float) -> bool:
        def renew(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cursor = conn.execute(
                "UPDATE afterwork_leases SET expires_at = ?"
                " WHERE name = ? AND token = ? AND expires_at > ?",
                (now + ttl, name, token, now),
            )
            return cursor.rowcount == 1

        return await self._db.write(renew)

    async def release_lease(self, name: str, token: str) -> bool:
        def release(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM afterwork_leases WHERE name = ? AND token = ?", (name, token)
            )
            return cursor.rowcount == 1

        return await self._db.write(release)

    async def list_leases(self) -> list[LeaseInfo]:
        now = self._clock()

        def held(conn: sqlite3.Connection) -> list[tuple[str, str, float, float]]:
            rows: list[tuple[str, str, float, float]] = conn.execute(
                "SELECT name, holder, acquired_at, expires_at FROM afterwork_leases"
                " WHERE expires_at > ? ORDER BY name",
                (now,),
            ).fetchall()
            return rows

        return [
            LeaseInfo(name=name, holder=holder, acquired_at=acquired, expires_at=expires)
            for name, holder, acquired, expires in await self._db.read(held)
        ]
