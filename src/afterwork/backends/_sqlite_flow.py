"""Fleet-wide flow limits in a SQLite claim: which ready rows may be claimed.

The claim transaction counts the running jobs of limited tasks, reads the recent starts
of rate-limited groups (``afterwork_starts``), picks the rows page by page (passing over
full groups), then writes its claims and their starts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from .. import _lifecycle as life
from ._sqlite_rows import Connection
from ._sqlite_schema import COLUMNS

__all__ = ("STAMP_START", "Groups", "read_starts")

#: Where a claim row (priority, run_at, seq, then the job columns) holds these.
_TASK = 3 + COLUMNS.index("task")
_KWARGS = 3 + COLUMNS.index("kwargs")
_ID = 3 + COLUMNS.index("id")
#: Rows scanned per queue at most: a larger backlog of full groups ahead is not searched.
_SCAN = 5000


class Groups:
    """The flow groups of a claim's limits, and the running jobs in each; the rate groups
    of its rate limits, and the starts in each window."""

    def __init__(
        self,
        limits: Mapping[str, life.FlowLimit],
        rates: Mapping[str, life.RateLimit] | None = None,
        *,
        conn: Connection | None = None,
        now: float = 0.0,
    ) -> None:
        self.limits = limits
        self.rates = rates or {}
        self.used: Counter[str] = Counter()
        self.skipped = False
        self.conn = conn
        self.now = now
        self.begun: dict[str, int] = {}  # starts in the window, per rate group
        self.tails: dict[str, list[float]] = {}  # the most recent of them, when it binds
        self.pending: Counter[str] = Counter()  # claimed, not started (counted as now)
        self.started: list[tuple[str, str]] = []  # (group, job id) of this claim's jobs
        self.rate_next: float | None = None

    def _rate(self, task: str, kwargs: str | None) -> tuple[str, life.RateLimit] | None:
        rate = self.rates.get(task)
        if rate is None:
            return None
        return life.rate_group(task, _decode(kwargs) if rate.key else {}, rate), rate

    def _load(self, group: str, rate: life.RateLimit) -> None:
        """Count the group's starts in the window and its pending claims, once per claim
        (expired starts and dropped claims are deleted)."""
        if group in self.begun:
            return
        assert self.conn is not None
        self.conn.execute(
            "DELETE FROM afterwork_starts WHERE grp = ? AND pending = 0 AND at <= ?",
            (group, self.now - rate.per),
        )
        (begun,) = self.conn.execute(
            "SELECT count(*) FROM afterwork_starts WHERE grp = ? AND pending = 0 AND at > ?",
            (group, self.now - rate.per),
        ).fetchone()
        pending = 0
        rows = self.conn.execute(
            "SELECT s.job_id, j.status, j.started_at"
            " FROM afterwork_starts s LEFT JOIN afterwork_jobs j ON j.id = s.job_id"
            " WHERE s.grp = ? AND s.pending = 1",
            (group,),
        ).fetchall()
        for job_id, status, started_at in rows:
            if status == "running" and started_at is None:
                pending += 1  # claimed, not started: it counts as starting now
            else:  # released or recovered before it started
                self.conn.execute(
                    "DELETE FROM afterwork_starts WHERE job_id = ? AND pending = 1", (job_id,)
                )
        self.begun[group] = begun
        self.pending[group] = pending

    def _tail(self, group: str, rate: life.RateLimit) -> list[float]:
        """The group's most recent starts (``limit`` of them), read only when it binds."""
        tail = self.tails.get(group)
        if tail is None:
            assert self.conn is not None
            rows = self.conn.execute(
                "SELECT at FROM afterwork_starts WHERE grp = ? AND pending = 0 AND at > ?"
                " ORDER BY at DESC LIMIT ?",
                (group, self.now - rate.per, rate.limit),
            ).fetchall()
            tail = self.tails[group] = [at for (at,) in rows]
        return tail

    def _rate_full(self, row: Any, extra: Counter[str] | None) -> bool:
        found = self._rate(row[_TASK], row[_KWARGS])
        if found is None:
            return False
        group, rate = found
        self._load(group, rate)
        pending = self.pending[group] + (extra[group] if extra is not None else 0)
        begun = self.begun[group]
        tail = self._tail(group, rate) if begun + pending >= rate.limit else []
        at = life.rate_next_start(tail, now=self.now, rate=rate, pending=pending, begun=begun)
        if at is None:
            if extra is not None:
                extra[group] += 1
            return False
        self.rate_next = at if self.rate_next is None else min(self.rate_next, at)
        return True

    def record_start(self, row: Any) -> None:
        """Count a claimed row's start in its rate group (written by :meth:`write_starts`)."""
        found = self._rate(row[_TASK], row[_KWARGS])
        if found is not None:
            self.pending[found[0]] += 1
            self.started.append((found[0], row[_ID]))

    def write_starts(self) -> None:
        """This claim's jobs join their groups' logs as pending (their begin stamps them)."""
        if self.started:
            assert self.conn is not None
            self.conn.executemany(
                "INSERT INTO afterwork_starts (grp, at, job_id, pending) VALUES (?, ?, ?, 1)",
                [(group, self.now, job_id) for group, job_id in self.started],
            )

    def of(self, task: str, kwargs: str | None) -> tuple[str, int] | None:
        """The group of a job and its cap, or ``None`` for a job of an unlimited task."""
        flow = self.limits.get(task)
        if flow is None:
            return None
        if flow.key is None:
            return task, flow.limit
        return life.flow_group(task, _decode(kwargs), flow), flow.limit

    def count_running(self, conn: Connection) -> None:
        tasks = list(self.limits)
        if not tasks:
            return
        marks = ", ".join("?" * len(tasks))
        query = (
            # The partial index of running jobs: the running ones only, never the backlog.
            "SELECT task, kwargs FROM afterwork_jobs INDEXED BY afterwork_jobs_leases"
            f" WHERE status = 'running' AND task IN ({marks})"
        )
        for task, kwargs in conn.execute(query, tasks).fetchall():
            group = self.of(task, kwargs)
            if group is not None:
                self.used[group[0]] += 1

    def pick(self, fetch: Callable[[int, int], list[Any]], limit: int) -> list[Any]:
        """Up to ``limit`` rows of one queue, in order, none over its group's cap.

        ``fetch(count, offset)`` reads a page of the queue's ready rows.
        """
        taken = Counter(self.used)
        rate_taken: Counter[str] = Counter()
        found: list[Any] = []
        page, offset = limit, 0
        while len(found) < limit and offset < _SCAN:
            rows = fetch(page, offset)
            for row in rows:
                if self._rate_full(row, rate_taken):
                    continue
                if self._over(row, taken):
                    continue
                found.append(row)
                if len(found) >= limit:
                    break
            if len(rows) < page:
                break
            offset += page
            page = min(page * 4, _SCAN)  # passing over full groups: read further ahead
        return found

    def admit(self, row: Any) -> bool:
        """Count ``row`` as claimed, unless its group is full (reached by another queue)."""
        if self._rate_full(row, None):
            return False
        if self._over(row, self.used):
            return False
        self.record_start(row)
        return True

    def _over(self, row: Any, counts: Counter[str]) -> bool:
        if not self.limits:
            return False
        group = self.of(row[_TASK], row[_KWARGS])
        if group is None:
            return False
        if counts[group[0]] >= group[1]:
            self.skipped = True
            return True
        counts[group[0]] += 1
        return False


def _decode(kwargs: str | None) -> dict[str, Any]:
    try:
        decoded = json.loads(kwargs or "{}")
    except ValueError:
        decoded = {}
    return decoded if isinstance(decoded, dict) else {}


#: A begun attempt stamps its start in its rate group's log (no row: not rate-limited).
STAMP_START = "UPDATE afterwork_starts SET at = ?, pending = 0 WHERE job_id = ? AND pending = 1"


def read_starts(conn: Connection, group: str, now: float, rate: life.RateLimit) -> list[float]:
    """A group's starts in the window, pending claims counted as ``now``."""
    rows = conn.execute(
        "SELECT s.at, s.pending, j.status, j.started_at"
        " FROM afterwork_starts s LEFT JOIN afterwork_jobs j ON j.id = s.job_id"
        " WHERE s.grp = ?",
        (group,),
    ).fetchall()
    starts: list[float] = []
    for at, is_pending, status, started_at in rows:
        if not is_pending and not life.rate_expired(at, now=now, rate=rate):
            starts.append(at)
        elif is_pending and status == "running" and started_at is None:
            starts.append(now)
    return sorted(starts)
