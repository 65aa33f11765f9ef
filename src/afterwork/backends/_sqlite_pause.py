"""Paused queues on SQLite: rows ``paused:<queue>`` of ``afterwork_meta`` (no migration).

Every claim reads them in its own transaction (a primary-key range), so a pause reaches
every process at its next claim, and survives restarts with the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ._sqlite_rows import Connection, Tx

if TYPE_CHECKING:
    from ._sqlite_db import Database

__all__ = ("PauseMixin", "paused_queues", "without_paused")

T = TypeVar("T")

_PREFIX = "paused:"


def paused_queues(conn: Connection) -> frozenset[str]:
    rows = conn.execute(
        "SELECT name FROM afterwork_meta WHERE name >= ? AND name < ?", (_PREFIX, "paused;")
    ).fetchall()
    return frozenset(name.removeprefix(_PREFIX) for (name,) in rows)


def without_paused(query: str, held: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """A claim across every queue, leaving out the paused ones: the query and its head."""
    if not held:
        return query, ()
    marks = ", ".join("?" * len(held))
    clause = "WHERE status = 'queued'"
    return query.replace(clause, f"{clause} AND queue NOT IN ({marks})", 1), tuple(sorted(held))


class PauseMixin:
    """``pause_queue``, ``resume_queue`` and ``paused_queues`` (the QueuePause protocol)."""

    _db: Database

    if TYPE_CHECKING:

        async def _write(self, fn: Callable[[Tx], T]) -> T: ...

    async def pause_queue(self, queue: str) -> None:
        def pause(tx: Tx) -> None:
            tx.conn.execute(
                "INSERT OR IGNORE INTO afterwork_meta (name, value) VALUES (?, '1')",
                (_PREFIX + queue,),
            )

        await self._write(pause)

    async def resume_queue(self, queue: str) -> None:
        def resume(tx: Tx) -> None:
            tx.conn.execute("DELETE FROM afterwork_meta WHERE name = ?", (_PREFIX + queue,))
            tx.wake = True  # its waiting jobs are work again

        await self._write(resume)

    async def paused_queues(self) -> frozenset[str]:
        return await self._db.read(paused_queues)
