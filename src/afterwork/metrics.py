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
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import MissingDependencyError
from .job import Job, JobStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
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
        labels = ("task", "queue")
        self.jobs: Counter = prom.Counter(
            "afterwork_jobs",
            "Jobs enqueued and attempts by how they ended.",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.duration: Histogram = prom.Histogram(
            "afterwork_job_duration_seconds",
            "How long each attempt ran.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.wait: Histogram = prom.Histogram(
            "afterwork_job_wait_seconds",
            "How long each attempt waited from its due time to its start.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._series: dict[tuple[str, str], _Series] = {}
        self._queues: list[QueueStats] = []
        self._workers = 0
        self._read_at = -float("inf")
        self.registry.register(_QueueCollector(self))
        aw.middleware(self)

    async def __call__(
        self, call: JobCall, call_next: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """The middleware: count the enqueue or the attempt, time it."""
        series = self._series.get((call.task, call.queue))
        if series is None:
            series = self._series[(call.task, call.queue)] = _Series(self, call.task, call.queue)
        if call.kind == "enqueue":
            stored = await call_next()
            if stored is not None and stored.id == call.job_id:
                series.count("enqueued")
            return stored
        job = call.job
        if job is not None:
            series.timers()[1].observe(max(self.aw.backend.now() - job.run_at, 0.0))
            timeline = job.timeline
            if timeline and timeline[-1].outcome == "lost":
                series.count("recovered")
        series.count("started")
        started = time.perf_counter()
        done = await call_next()
        series.timers()[0].observe(time.perf_counter() - started)
        series.count("lost" if done is None else _OUTCOMES.get(done.status, done.status.value))
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


class _Series:
    """The labelled children of one (task, queue), looked up once (``labels()`` is slow)."""

    __slots__ = ("_counters", "_metrics", "_queue", "_task", "_timers")

    def __init__(self, metrics: Metrics, task: str, queue: str) -> None:
        self._metrics = metrics
        self._task = task
        self._queue = queue
        self._counters: dict[str, Any] = {}
        self._timers: tuple[Any, Any] | None = None

    def timers(self) -> tuple[Any, Any]:
        """The duration and wait histograms (made on the first attempt, not on enqueue)."""
        if self._timers is None:
            metrics, labels = self._metrics, (self._task, self._queue)
            self._timers = (metrics.duration.labels(*labels), metrics.wait.labels(*labels))
        return self._timers

    def count(self, outcome: str) -> None:
        counter = self._counters.get(outcome)
        if counter is None:
            counter = self._counters[outcome] = self._metrics.jobs.labels(
                self._task, self._queue, outcome
            )
        counter.inc()


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
