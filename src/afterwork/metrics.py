"""Prometheus metrics, built on the middleware seam (extra ``afterwork[metrics]``).

:class:`Metrics` adds itself to an :class:`~afterwork.Afterwork` as a middleware and counts
what passes through it: every enqueue and every attempt of this process. The queue gauges
are read from the store when scraped (cached for ``cache_ttl`` seconds, so a busy
Prometheus does not load the store). Each instance owns its own ``CollectorRegistry``
unless given one, so two instances (or two tests) never collide.

Example:
    ```python
    from afterwork.metrics import Metrics

    metrics = Metrics(aw)
    app.include_router(aw.router(auth=Depends(require_admin), metrics=metrics),
                       prefix="/afterwork")          # GET /afterwork/metrics
    ```

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import MissingDependencyError
from .job import Job, JobStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from ._engine.services import ServiceStatus
    from ._middleware import JobCall, Middleware
    from .backends.base import QueueStats, Store, WorkerInfo

__all__ = ("CONTENT_TYPE", "DURATION_BUCKETS", "Metrics")

#: The media type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Histogram buckets (seconds) of run time and wait time: 5 ms to 1 h.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip

#: The ``le`` label of each bucket, as Prometheus writes it.
_BOUNDS = tuple(repr(float(bound)) for bound in DURATION_BUCKETS)

#: The ``outcome`` label of an attempt, by the status its outcome left the job in.
_OUTCOMES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.SCHEDULED: "retried",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.QUEUED: "released",
}


class Observed(Protocol):
    """What :class:`Metrics` needs of an :class:`~afterwork.Afterwork` (it satisfies this)."""

    @property
    def backend(self) -> Store: ...

    def middleware(self, func: Middleware, /) -> Middleware: ...

    async def stats(self) -> list[QueueStats]: ...

    async def workers(self) -> list[WorkerInfo]: ...

    @property
    def services(self) -> list[ServiceStatus]: ...


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MissingDependencyError("metrics", "prometheus_client") from None
    return prometheus_client


class Metrics:
    """Prometheus metrics of one :class:`~afterwork.Afterwork` (it adds itself as middleware).

    Metrics:
        ``afterwork_jobs_total{task,queue,outcome}``: counter; ``outcome`` is ``enqueued``
            (a new job stored; a ``key=`` duplicate is not counted), ``started``,
            ``succeeded``, ``failed`` (final), ``retried`` (failed, another attempt
            follows), ``cancelled``, ``released`` (given back on a graceful stop),
            ``lost`` (the lease was lost mid-attempt) and ``recovered`` (an attempt that
            follows one whose worker died).
        ``afterwork_job_duration_seconds{task,queue}``: histogram of attempt run time.
        ``afterwork_job_wait_seconds{task,queue}``: histogram of due time → start.
        ``afterwork_queue_jobs{queue,status}``: gauge, read from the store at scrape.
        ``afterwork_workers``: gauge, the live workers sharing the store, read at scrape.
        ``afterwork_services{name,state}``: gauge, 1 for each service's current state.

    The counts and histograms are plain integers kept per ``(task, queue)`` and turned into
    Prometheus samples only when scraped (a ``prometheus_client`` child per observation
    costs a lock and a bucket walk per job). They count what ran on the event loop of this
    process.

    Args:
        aw: the instance to observe.
        registry: where the metrics are registered (default: a new registry of its own).
        cache_ttl: seconds a scrape reuses the store's queue counts.

    Raises:
        MissingDependencyError: ``prometheus_client`` is not installed.
    """

    def __init__(
        self,
        aw: Observed,
        *,
        registry: CollectorRegistry | None = None,
        cache_ttl: float = 2.0,
    ) -> None:
        prom = _prometheus()
        self.aw = aw
        self.registry: CollectorRegistry = registry or prom.CollectorRegistry(auto_describe=True)
        self.cache_ttl = cache_ttl
        self._series: dict[str, dict[str, _Series]] = {}
        self._queues: list[QueueStats] = []
        self._workers = 0
        self._read_at = -float("inf")
        self._now = aw.backend.now
        self.registry.register(_JobCollector(self))
        self.registry.register(_QueueCollector(self))
        aw.middleware(self)

    async def __call__(
        self, call: JobCall, call_next: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """The middleware: count the enqueue or the attempt, time it."""
        # On every job's path: the series is found by task then queue (no key tuple), the
        # counts are a list indexed by outcome, and the histograms are updated in place.
        queues = self._series.get(call.task)
        if queues is None:
            queues = self._series[call.task] = {}
        series = queues.get(call.queue)
        if series is None:
            series = queues[call.queue] = _Series()
        counts = series.counts
        if call.kind == "enqueue":
            stored = await call_next()
            if stored is not None and stored.id == call.job_id:
                counts[_ENQUEUED] += 1
            return stored
        job = call.job
        if job is not None:
            wait = self._now() - job.run_at
            if wait < 0.0:
                wait = 0.0
            histogram = series.wait
            histogram.buckets[bisect_left(DURATION_BUCKETS, wait)] += 1
            histogram.sum += wait
            timeline = job.timeline
            if timeline and timeline[-1].outcome == "lost":
                counts[_RECOVERED] += 1
        counts[_STARTED] += 1
        started = perf_counter()
        done = await call_next()
        ran = perf_counter() - started
        histogram = series.duration
        histogram.buckets[bisect_left(DURATION_BUCKETS, ran)] += 1
        histogram.sum += ran
        if done is None:
            counts[_LOST] += 1
        else:
            counts[_OUTCOME_INDEX[done.status]] += 1
        return done

    async def refresh(self) -> None:
        """Read the queue counts from the store, unless read within ``cache_ttl``."""
        now = time.monotonic()
        if now - self._read_at < self.cache_ttl:
            return
        self._queues = await self.aw.stats()
        self._workers = len(await self.aw.workers())
        self._read_at = now

    async def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (the queue counts refreshed first)."""
        await self.refresh()
        data: bytes = _prometheus().generate_latest(self.registry)
        return data


class _Histogram:
    """Bucket counts (not cumulative; the last is ``+Inf``) and the sum of one histogram."""

    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(DURATION_BUCKETS, value)] += 1  # le: the first bound >= value
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total, out = 0, []
        for bound, count in zip((*_BOUNDS, "+Inf"), self.buckets, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


#: The ``outcome`` labels, in the order of :attr:`_Series.counts`.
_NAMES = (
    "enqueued", "started", "succeeded", "failed", "retried", "cancelled", "released", "lost",
    "recovered", "running",
)  # fmt: skip
_ENQUEUED, _STARTED, _LOST, _RECOVERED = (
    _NAMES.index(name) for name in ("enqueued", "started", "lost", "recovered")
)
#: The index of an attempt's outcome in the counts, by the status it left the job in (every
#: status: one an attempt never ends in counts under its own name).
_OUTCOME_INDEX = {
    status: _NAMES.index(_OUTCOMES.get(status) or status.value) for status in JobStatus
}


class _Series:
    """What one (task, queue) counted: outcomes, run time and wait time."""

    __slots__ = ("counts", "duration", "wait")

    def __init__(self) -> None:
        self.counts = [0] * len(_NAMES)
        self.duration = _Histogram()
        self.wait = _Histogram()

    def outcomes(self) -> Iterator[tuple[str, int]]:
        """The outcomes counted at least once, and their counts."""
        for name, count in zip(_NAMES, list(self.counts), strict=True):
            if count:
                yield name, count


class _JobCollector:
    """``afterwork_jobs_total`` and the two histograms, from the counts kept per series."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        jobs = CounterMetricFamily(
            "afterwork_jobs", "Jobs enqueued and attempts by how they ended.",
            labels=("task", "queue", "outcome"),
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "afterwork_job_duration_seconds", "How long each attempt ran.",
            labels=("task", "queue"),
        )  # fmt: skip
        wait = HistogramMetricFamily(
            "afterwork_job_wait_seconds",
            "How long each attempt waited from its due time to its start.",
            labels=("task", "queue"),
        )
        for task, queues in list(self._metrics._series.items()):
            for queue, series in list(queues.items()):
                for outcome, count in series.outcomes():
                    jobs.add_metric((task, queue, outcome), count)
                if series.counts[_STARTED]:  # histograms only for what ran here
                    for family, histogram in ((duration, series.duration), (wait, series.wait)):
                        family.add_metric((task, queue), histogram.cumulative(), histogram.sum)
        yield jobs
        yield duration
        yield wait

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _QueueCollector:
    """``afterwork_queue_jobs{queue,status}`` from the last store read."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "afterwork_queue_jobs", "Jobs per queue and status, as the store counts them.",
            labels=("queue", "status"),
        )  # fmt: skip
        for stats in self._metrics._queues:
            for status in JobStatus:
                family.add_metric((stats.queue, status.value), stats.counts.get(status, 0))
        yield family
        services = GaugeMetricFamily(
            "afterwork_services",
            "The services of this process: 1 for the state each one is in, 0 for the others.",
            labels=("name", "state"),
        )
        for service in self._metrics.aw.services:
            for state in type(service.state):
                services.add_metric((service.name, state.value), int(state is service.state))
        yield services
        yield GaugeMetricFamily(
            "afterwork_workers",
            "Live workers sharing the store (their presence records).",
            value=self._metrics._workers,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())
