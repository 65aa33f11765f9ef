"""Fleet-wide flow limits in a SQLite claim: which ready rows may be claimed.

Reads only: the claim transaction counts the running jobs of limited tasks, picks the
rows page by page (passing over full groups), then writes its claims.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from .. import _lifecycle as life
from ._sqlite_rows import Connection
from ._sqlite_schema import COLUMNS

__all__ = ("Groups",)

#: Where a claim row (priority, run_at, seq, then the job columns) holds these.
_TASK = 3 + COLUMNS.index("task")
_KWARGS = 3 + COLUMNS.index("kwargs")
#: Rows scanned per queue at most: a larger backlog of full groups ahead is not searched.
_SCAN = 5000


class Groups:
    """The flow groups of a claim's limits, and the running jobs in each."""

    def __init__(self, limits: Mapping[str, life.FlowLimit]) -> None:
        self.limits = limits
        self.used: Counter[str] = Counter()
        self.skipped = False

    def of(self, task: str, kwargs: str | None) -> tuple[str, int] | None:
        """The group of a job and its cap, or ``None`` for a job of an unlimited task."""
        flow = self.limits.get(task)
        if flow is None:
            return None
        if flow.key is None:
            return task, flow.limit
        try:
            decoded = json.loads(kwargs or "{}")
        except ValueError:
            decoded = {}
        named = decoded if isinstance(decoded, dict) else {}
        return life.flow_group(task, named, flow), flow.limit

    def count_running(self, conn: Connection) -> None:
        tasks = list(self.limits)
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
        found: list[Any] = []
        page, offset = limit, 0
        while len(found) < limit and offset < _SCAN:
            rows = fetch(page, offset)
            for row in rows:
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
        return not self._over(row, self.used)

    def _over(self, row: Any, counts: Counter[str]) -> bool:
        group = self.of(row[_TASK], row[_KWARGS])
        if group is None:
            return False
        if counts[group[0]] >= group[1]:
            self.skipped = True
            return True
        counts[group[0]] += 1
        return False
