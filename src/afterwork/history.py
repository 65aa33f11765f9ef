"""Per-minute history: counts and timing summaries per task and queue.

:class:`History` adds itself to an :class:`~afterwork.Afterwork` as a middleware (the same
seam as :class:`afterwork.metrics.Metrics`). Around every attempt it adds one to a tally of
the attempt's minute, task and queue: how it ended (succeeded, failed, retried), how long it
ran and how long it waited from its due time to its start, as sparse histograms on
:data:`BUCKETS`. The tallies are flushed to the store in one batch every ``flush_interval``
seconds (and when the instance closes); rows of the same minute add up in the store, so
every worker of every process can flush the same minute. Rows older than ``retention`` are
purged (at most once an hour, by each recorder).

:meth:`Afterwork.history() <afterwork.Afterwork.history>` reads them back, summed into steps
of any size with p50 and p95 estimated from the merged histograms.

Example:
    ```python
    from afterwork.history import History

    History(aw)  # in the module that defines aw: the workers record, anyone reads
    points = await aw.history(since=time.time() - 3600, by=("task",))
    ```

.. versionadded:: 0.2
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .backends.base import HistoryRow, HistoryStore, Store
from .exceptions import ConfigurationError
from .job import Job, JobStatus

if TYPE_CHECKING:
    from ._clock import EngineClock
    from ._middleware import JobCall, Middleware

__all__ = (
    "BUCKETS",
    "DEFAULT_RETENTION",
    "History",
    "HistoryPoint",
    "read_history",
)

logger: logging.Logger = logging.getLogger("afterwork.history")

#: Upper bounds (seconds) of the timing buckets: 1 ms to about an hour, each 2^(1/4) times
#: the one before (a quantile read from them is within 19 % of the true value).
BUCKETS: tuple[float, ...] = tuple(0.001 * 2 ** (i / 4) for i in range(88))

#: How long rows are kept by default: 7 days, in seconds.
DEFAULT_RETENTION = 7 * 86_400.0

#: Seconds between two purges of old rows by one recorder.
_PURGE_EVERY = 3_600.0

GroupBy = Literal["task", "queue"]


class Recorded(Protocol):
    """What :class:`History` needs of an :class:`~afterwork.Afterwork` (it satisfies this)."""

    @property
    def backend(self) -> Store: ...

    @property
    def clock(self) -> EngineClock: ...

    def middleware(self, func: Middleware, /) -> Middleware: ...


_SUCCEEDED, _FAILED, _SCHEDULED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SCHEDULED


class _Tally:
    """One (minute, task, queue) as this process saw it since its last flush."""

    __slots__ = ("failed", "retried", "run", "run_sum", "succeeded", "wait", "wait_sum")

    def __init__(self) -> None:
        self.succeeded = self.failed = self.retried = 0
        self.run_sum = self.wait_sum = 0.0
        self.run: dict[int, int] = {}
        self.wait: dict[int, int] = {}

    def row(self, key: tuple[float, str, str]) -> HistoryRow:
        minute, task, queue = key
        return HistoryRow(
            minute=minute,
            task=task,
            queue=queue,
            succeeded=self.succeeded,
            failed=self.failed,
            retried=self.retried,
            run_sum=self.run_sum,
            run_buckets=dict(self.run),
            wait_sum=self.wait_sum,
            wait_buckets=dict(self.wait),
        )


class History:
    """Records per-minute history of the attempts run through ``aw`` (it adds itself as
    middleware) and flushes it to the store in batches.

    Args:
        aw: the instance whose attempts to record.
        retention: seconds rows are kept (``None``: forever).
        flush_interval: seconds between two flushes while there is something to flush.

    Raises:
        ConfigurationError: the store keeps no history (it is not a
            :class:`~afterwork.backends.base.HistoryStore`), or a bad argument.
    """

    def __init__(
        self,
        aw: Recorded,
        *,
        retention: float | None = DEFAULT_RETENTION,
        flush_interval: float = 10.0,
    ) -> None:
        store = aw.backend
        if not isinstance(store, HistoryStore):
            raise ConfigurationError(f"{type(store).__name__} keeps no history")
        if flush_interval <= 0 or (retention is not None and retention <= 0):
            raise ConfigurationError("flush_interval and retention must be positive")
        self.aw = aw
        self.retention = retention
        self.flush_interval = flush_interval
        self._store: HistoryStore = store
        self._now = store.now
        self._pending: dict[tuple[float, str, str], _Tally] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._purged_at = -math.inf
        self._failing = False
        aw.middleware(self)
        hooks: list[Callable[[], Awaitable[None]]] | None = getattr(aw, "_close_hooks", None)
        if hooks is not None:
            hooks.append(self.close)

    async def __call__(
        self, call: JobCall, call_next: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """The middleware: tally the attempt into its minute."""
        if call.kind != "attempt":
            return await call_next()
        begun = self._now()
        started = perf_counter()
        done = await call_next()
        ran = perf_counter() - started
        ended = begun + ran
        key = (ended - ended % 60.0, call.task, call.queue)
        tally = self._pending.get(key)
        if tally is None:
            tally = self._pending[key] = _Tally()
        # Tallied inline (no method call): this runs on every attempt's path.
        if done is not None:
            status = done.status
            if status is _SUCCEEDED:
                tally.succeeded += 1
            elif status is _SCHEDULED:
                tally.retried += 1
            elif status is _FAILED:
                tally.failed += 1
        index = bisect_left(BUCKETS, ran)
        buckets = tally.run
        buckets[index] = buckets.get(index, 0) + 1
        tally.run_sum += ran
        job = call.job
        waited = begun - job.run_at if job is not None else 0.0
        if waited < 0.0:
            waited = 0.0
        index = bisect_left(BUCKETS, waited)
        buckets = tally.wait
        buckets[index] = buckets.get(index, 0) + 1
        tally.wait_sum += waited
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
        return done

    async def _flush_later(self) -> None:
        try:
            while self._pending:
                await self.aw.clock.sleep(self.flush_interval)
                await self.flush()
        finally:
            self._flusher = None

    async def flush(self) -> None:
        """Write what was tallied since the last flush (kept for the next one if it fails);
        purge rows past the retention at most once an hour."""
        if self._pending:
            pending, self._pending = self._pending, {}
            try:
                await self._store.record_history([t.row(k) for k, t in pending.items()])
            except Exception as exc:
                for key, tally in pending.items():  # back, to be tried again
                    later = self._pending.get(key)
                    self._pending[key] = tally if later is None else _merge(tally, later)
                if not self._failing:
                    logger.warning(
                        "could not write history (kept for the next flush): %s",
                        exc,
                        extra={"action": "history_flush_failed"},
                    )
                self._failing = True
                return
            self._failing = False
        now = self._now()
        if self.retention is not None and now - self._purged_at >= _PURGE_EVERY:
            self._purged_at = now
            with contextlib.suppress(Exception):  # advisory: the next purge tries again
                await self._store.purge_history(before=now - self.retention)

    async def close(self) -> None:
        """Stop the periodic flush and flush what is left (``aw.aclose()`` calls this)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
        await self.flush()


def _merge(a: _Tally, b: _Tally) -> _Tally:
    a.succeeded += b.succeeded
    a.failed += b.failed
    a.retried += b.retried
    a.run_sum += b.run_sum
    a.wait_sum += b.wait_sum
    for mine, theirs in ((a.run, b.run), (a.wait, b.wait)):
        for index, count in theirs.items():
            mine[index] = mine.get(index, 0) + count
    return a


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPoint:
    """One step of history: the attempts that ended in ``[at, at + step)``.

    ``task`` and ``queue`` are ``None`` when the points are not grouped by them. The
    quantiles are estimated from the histograms (within a bucket's width, 19 %); they are
    ``None`` when no attempt ended in the step.

    .. versionadded:: 0.2
    """

    at: float
    """Start of the step, in seconds since the epoch."""
    task: str | None
    queue: str | None
    succeeded: int
    failed: int
    retried: int
    attempts: int
    """Attempts that ended (every outcome, cancelled and released ones too)."""
    run_mean: float | None
    run_p50: float | None
    run_p95: float | None
    wait_mean: float | None
    wait_p50: float | None
    wait_p95: float | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def quantile(buckets: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile of a sparse histogram on :data:`BUCKETS` (interpolated linearly
    inside its bucket, as Prometheus' ``histogram_quantile`` does)."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(buckets):
        count = buckets[index]
        if seen + count >= rank and count:
            if index >= len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[index - 1] if index > 0 else 0.0
            return lower + (BUCKETS[index] - lower) * (rank - seen) / count
        seen += count
    return BUCKETS[-1]


def summarize(
    rows: Iterable[HistoryRow],
    *,
    since: float,
    step: float,
    by: Sequence[GroupBy] = ("task", "queue"),
) -> list[HistoryPoint]:
    """Sum rows into steps of ``step`` seconds from ``since``, grouped ``by`` task and/or
    queue; ordered by step, then group."""
    groups: dict[tuple[float, str | None, str | None], HistoryRow] = {}
    for row in rows:
        at = since + math.floor((row.minute - since) / step) * step
        task = row.task if "task" in by else None
        queue = row.queue if "queue" in by else None
        key = (at, task, queue)
        moved = HistoryRow(
            minute=at,
            task=task or "",
            queue=queue or "",
            succeeded=row.succeeded,
            failed=row.failed,
            retried=row.retried,
            run_sum=row.run_sum,
            run_buckets=row.run_buckets,
            wait_sum=row.wait_sum,
            wait_buckets=row.wait_buckets,
        )
        held = groups.get(key)
        groups[key] = moved if held is None else held.merged(moved)
    points = []
    for (at, task, queue), row in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1] or "", item[0][2] or "")
    ):
        attempts = sum(row.run_buckets.values())
        waits = sum(row.wait_buckets.values())
        points.append(
            HistoryPoint(
                at=at,
                task=task,
                queue=queue,
                succeeded=row.succeeded,
                failed=row.failed,
                retried=row.retried,
                attempts=attempts,
                run_mean=row.run_sum / attempts if attempts else None,
                run_p50=quantile(row.run_buckets, 0.5),
                run_p95=quantile(row.run_buckets, 0.95),
                wait_mean=row.wait_sum / waits if waits else None,
                wait_p50=quantile(row.wait_buckets, 0.5),
                wait_p95=quantile(row.wait_buckets, 0.95),
            )
        )
    return points


async def read_history(
    store: Store,
    *,
    since: float | None = None,
    until: float | None = None,
    step: float = 60.0,
    task: str | None = None,
    queue: str | None = None,
    by: Sequence[GroupBy] = ("task", "queue"),
) -> list[HistoryPoint]:
    """The history kept in ``store`` (see :meth:`Afterwork.history`)."""
    if step < 60.0 or step % 60.0:
        raise ValueError("step must be a whole number of minutes, in seconds (60, 300, ...)")
    if not all(math.isfinite(t) for t in (since, until) if t is not None):
        raise ValueError("since and until must be finite numbers")
    if any(group not in ("task", "queue") for group in by):
        raise ValueError("by names 'task' and/or 'queue'")
    if not isinstance(store, HistoryStore):
        return []
    end = math.floor(store.now() / 60.0) * 60.0 + 60.0 if until is None else until
    start = end - 3_600.0 if since is None else since
    start -= start % 60.0
    rows = await store.read_history(since=start, until=end, task=task, queue=queue)
    return summarize(rows, since=start, step=step, by=by)
