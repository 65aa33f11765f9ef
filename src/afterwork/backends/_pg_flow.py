"""Rate limits in a PostgreSQL claim: the SQLite store's :class:`~._sqlite_flow.Groups`
with its reads and writes of the starts log (table ``starts``) translated to asyncpg.

The same decisions (``life.rate_group``, ``life.rate_next_start``), in the claim's
transaction; claims with limits or rates are serialized by an advisory lock, so the
starts they count cannot change under them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import _lifecycle as life
from ._sqlite_flow import _KWARGS, _SCAN, _TASK, Groups

if TYPE_CHECKING:
    import asyncpg

__all__ = ("PgGroups", "read_starts", "stamp_start")


class PgGroups(Groups):
    """:class:`Groups` on a PostgreSQL connection (``schema`` is the quoted name)."""

    def __init__(
        self,
        limits: Mapping[str, life.FlowLimit],
        rates: Mapping[str, life.RateLimit] | None,
        *,
        pg: asyncpg.Connection,
        schema: str,
        now: float,
    ) -> None:
        super().__init__(limits, rates, now=now)
        self.pg = pg
        self.s = schema

    async def load(self, group: str, rate: life.RateLimit) -> None:
        """Count the group's starts in the window and its pending claims, once per claim
        (expired starts and dropped claims are deleted)."""
        if group in self.begun:
            return
        s, cut = self.s, self.now - rate.per
        await self.pg.execute(
            f"DELETE FROM {s}.starts WHERE grp = $1 AND NOT pending AND at <= $2", group, cut
        )
        # One statement, so one snapshot: read in two, a begin committing in between (its
        # start turned from pending to begun) would be counted in neither.
        begun = pending = 0
        dropped: list[str] = []
        for job_id, is_pending, status, started_at in await self.pg.fetch(
            f"SELECT s.job_id, s.pending, j.status, j.started_at FROM {s}.starts s"
            f" LEFT JOIN {s}.jobs j ON s.pending AND j.id = s.job_id"
            " WHERE s.grp = $1 AND (s.pending OR s.at > $2)",
            group,
            cut,
        ):
            if not is_pending:
                begun += 1
            elif status == "running" and started_at is None:
                pending += 1  # claimed, not started: it counts as starting now
            else:  # released or recovered before it started
                dropped.append(job_id)
        if dropped:
            await self.pg.execute(
                f"DELETE FROM {s}.starts WHERE job_id = ANY($1::text[]) AND pending", dropped
            )
        self.begun[group] = int(begun)
        self.pending[group] = pending

    async def tail(self, group: str, rate: life.RateLimit) -> list[float]:
        """The group's most recent starts (``limit`` of them), read only when it binds."""
        tail = self.tails.get(group)
        if tail is None:
            rows = await self.pg.fetch(
                f"SELECT at FROM {self.s}.starts WHERE grp = $1 AND NOT pending AND at > $2"
                " ORDER BY at DESC LIMIT $3",
                group,
                self.now - rate.per,
                rate.limit,
            )
            tail = self.tails[group] = [float(row[0]) for row in rows]
        return tail

    async def rate_full(self, row: Any, extra: Counter[str] | None) -> bool:
        found = self._rate(row[_TASK], row[_KWARGS])
        if found is None:
            return False
        group, rate = found
        await self.load(group, rate)
        pending = self.pending[group] + (extra[group] if extra is not None else 0)
        begun = self.begun[group]
        tail = await self.tail(group, rate) if begun + pending >= rate.limit else []
        at = life.rate_next_start(tail, now=self.now, rate=rate, pending=pending, begun=begun)
        if at is None:
            if extra is not None:
                extra[group] += 1
            return False
        self.rate_next = at if self.rate_next is None else min(self.rate_next, at)
        return True

    async def pick_async(
        self, fetch: Callable[[int, int], Awaitable[list[Any]]], limit: int
    ) -> list[Any]:
        """Up to ``limit`` ready rows, in order, none over its group's cap or rate."""
        taken = Counter(self.used)
        rate_taken: Counter[str] = Counter()
        found: list[Any] = []
        page, offset = limit, 0
        while len(found) < limit and offset < _SCAN:
            rows = await fetch(page, offset)
            for row in rows:
                if await self.rate_full(row, rate_taken):
                    continue
                if self._over(row, taken):
                    continue
                found.append(row)
                if len(found) >= limit:
                    break
            if len(rows) < page:
                break
            offset += page
            page = min(page * 4, _SCAN)
        return found

    async def admit_async(self, row: Any) -> bool:
        """Count ``row`` as claimed, unless its group is full."""
        if await self.rate_full(row, None):
            return False
        if self._over(row, self.used):
            return False
        self.record_start(row)
        return True

    async def write_starts_async(self) -> None:
        """This claim's jobs join their groups' logs as pending (their begin stamps them)."""
        if self.started:
            await self.pg.executemany(
                f"INSERT INTO {self.s}.starts (grp, at, job_id, pending) VALUES ($1, $2, $3, true)",
                [(group, self.now, job_id) for group, job_id in self.started],
            )


async def stamp_start(conn: asyncpg.Connection, schema: str, job_id: str, at: float) -> None:
    """A begun attempt stamps its start in its rate group's log (no row: not rate-limited)."""
    await conn.execute(
        f"UPDATE {schema}.starts SET at = $1, pending = false WHERE job_id = $2 AND pending",
        at,
        job_id,
    )


async def read_starts(
    conn: asyncpg.Connection, schema: str, group: str, now: float, rate: life.RateLimit
) -> list[float]:
    """A group's starts in the window, pending claims counted as ``now``."""
    rows = await conn.fetch(
        f"SELECT s.at, s.pending, j.status, j.started_at FROM {schema}.starts s"
        f" LEFT JOIN {schema}.jobs j ON j.id = s.job_id WHERE s.grp = $1",
        group,
    )
    starts: list[float] = []
    for at, is_pending, status, started_at in rows:
        if not is_pending and not life.rate_expired(at, now=now, rate=rate):
            starts.append(float(at))
        elif is_pending and status == "running" and started_at is None:
            starts.append(now)
    return sorted(starts)
