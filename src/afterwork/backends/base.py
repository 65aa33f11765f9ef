"""The storage contract every backend implements.

The protocol is small and storage-shaped: it moves jobs between states atomically and
answers questions about them. Everything above it (retries, backoff, timeouts,
concurrency limits, dependencies, scheduling) is written once, in the worker and the
runner, and is the same on every backend.

Contract (what must hold even on failure):

* Every method that changes a job does it atomically: a crash in the middle leaves the
  job as it was before the call, or as it is after it, never half-written.
* ``claim`` hands a job to at most one worker at a time: while a lease is valid nobody
  else can claim the job. A lease is identified by a token that is new for each claim.
* ``finish`` and ``heartbeat`` are *fenced*: they change a job only while the caller's
  token is the job's current token and the lease has not been recovered. A stale worker
  whose lease was taken over gets ``None`` / its job back in ``lost`` and changes nothing.
* ``recover_expired`` takes back jobs whose lease expired (their worker died or froze):
  a job only claimed goes back uncharged; a started one is queued again, or failed once
  ``max_recoveries`` workers died running it.
* Every decision about a job's state is made by :mod:`afterwork._lifecycle`; a store only
  loads, persists atomically (compare-and-set on the lease token) and keeps its indexes.
* Time is the store's clock (:meth:`now`), so all processes agree on when a lease expires
  and when a delayed job is due.
* Backends never unpickle anything. Arguments and results are JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .._lifecycle import Claim, FlowLimit, Lease, NewJob, Outcome, RateLimit
from ..job import Job, JobEvent, JobStatus

__all__ = (
    "TRUNCATED",
    "Backend",
    "BeginsTogether",
    "CancelWatch",
    "ChannelMessage",
    "Channels",
    "Claim",
    "Clock",
    "DueCount",
    "EventHistory",
    "EventStream",
    "FlowLimit",
    "HeartbeatReply",
    "HistoryRow",
    "HistoryStore",
    "Inspector",
    "JobFilter",
    "Lease",
    "LeaseInfo",
    "Leases",
    "MessageStream",
    "NewJob",
    "Outcome",
    "QueuePause",
    "QueueStats",
    "RateLimit",
    "RateLimits",
    "Store",
    "Ticks",
    "TransactionalEnqueue",
    "WorkerInfo",
    "WorkerPresence",
    "truncated_event",
)


class EventStream(Protocol):
    """An async iterator of events that is subscribed from its creation; ``aclose()`` ends it."""

    def __aiter__(self) -> EventStream: ...

    async def __anext__(self) -> JobEvent: ...

    async def aclose(self) -> None: ...


#: Seconds since the epoch. Backends take one to make tests independent of real time.
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """What a heartbeat learned about the leases it renewed."""

    lost: frozenset[str] = frozenset()
    """Jobs whose lease is no longer the caller's: stop them and write nothing."""
    cancel: frozenset[str] = frozenset()
    """Jobs someone asked to cancel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs to list, newest first. ``before`` is a cursor: a job id to list after."""

    statuses: Collection[JobStatus] = ()
    queue: str | None = None
    task: str | None = None
    before: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """Counts of a queue's jobs per status."""

    queue: str
    counts: dict[JobStatus, int]
    oldest_waiting_at: float | None = None
    """``run_at`` of the job that has waited longest among the due ones."""


@runtime_checkable
class Backend(Protocol):
    """What a worker and a client need from a store."""

    def now(self) -> float:
        """The store's clock, in seconds since the epoch."""
        ...

    async def open(self) -> None:
        """Connect and prepare the store (create or migrate the schema). Idempotent."""
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call twice, and after a failed ``open``."""
        ...

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Create ``jobs`` in one atomic step and return them in the same order.

        A job whose ``key`` is held by an unfinished job is not created: the existing
        job is returned in its place.
        """
        ...

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        """Create ``job`` already claimed by ``worker`` (work run in-process at once)."""
        ...

    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        exclude_tasks: Collection[str] = (),
        limits: Mapping[str, FlowLimit] | None = None,
        rates: Mapping[str, RateLimit] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` due jobs, highest priority first, then oldest first.

        ``queues`` ``None`` means every queue. Jobs of ``exclude_tasks`` are left alone.
        ``limits`` caps, per task name, the jobs running across the fleet: a job whose
        group (:func:`~afterwork._lifecycle.flow_group`) already has ``limit`` jobs
        ``running`` in the store (this claim's included) is passed over, and the jobs
        behind it may be claimed (no head-of-line blocking).
        ``rates`` caps, per task name, the starts per window: the store keeps the claim
        times of each group (:func:`~afterwork._lifecycle.rate_group`) in the window, asks
        :func:`~afterwork._lifecycle.rate_next_start` before it hands out a job of a
        rate-limited task (passing over the job when the answer is a time, and keeping the
        earliest such time for :meth:`RateLimits.rate_next`), and records ``now`` for each
        job it claims, all in the claim's atomic step.
        A claim holds the lease but does not start the attempt (``started_at`` stays
        unset): see :meth:`begin`.
        """
        ...

    async def begin(self, leases: Sequence[Lease]) -> list[Job | None]:
        """Start the claimed attempts of ``leases``, in one atomic step per call.

        Called right before a claimed job's code runs: only a started attempt counts as
        an attempt and is charged a recovery if its worker dies. Returns each job as
        started, or ``None`` where the lease is no longer the caller's.
        """
        ...

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        """Extend the leases that are still the caller's; report lost and cancelled ones."""
        ...

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        """Record how an attempt ended, if ``lease`` still holds. ``None`` if it does not."""
        ...

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        """Record a running job's progress, if ``lease`` still holds."""
        ...

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        """Take back jobs whose lease expired; return them as they are now."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job with that id, or ``None``."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a waiting job at once; ask the owner of a running one to stop it."""
        ...

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        """Return when a job may be due in ``queues``, or after ``timeout`` seconds."""
        ...

    def events(self) -> EventStream:
        """Every job's state changes from this call on, until the backend closes.

        The subscription starts when ``events()`` is called, not at the first ``anext``,
        so nothing published in between is missed. Delivery may be lossy for a subscriber
        that falls far behind.
        """
        ...


@runtime_checkable
class Inspector(Protocol):
    """What the CLI, the REST API and the dashboard need beyond :class:`Backend`."""

    async def list_jobs(self, filter: JobFilter) -> list[Job]:
        """Jobs matching ``filter``, newest first."""
        ...

    async def stats(self) -> list[QueueStats]:
        """Per-queue counts per status."""
        ...

    async def retry(self, job_id: str) -> Job | None:
        """Queue a failed or cancelled job again, with a fresh attempt budget."""
        ...

    async def purge(self, *, older_than: float | None = None) -> int:
        """Delete finished jobs: past their ``result_ttl``, or finished ``older_than`` s ago."""
        ...


@runtime_checkable
class Ticks(Protocol):
    """Exactly-once periodic ticks, enforced by the store (used by the scheduler)."""

    async def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> Job | None:
        """Enqueue ``job`` as ``tick`` of ``schedule``, unless that tick was enqueued before.

        The tick mark and the job are written in one atomic step, so however many
        processes call this for the same ``(schedule, tick)``, exactly one job exists
        for it. Returns the new job, or ``None`` if the tick was already taken. Marks are
        kept at least a day (they only need to outlive the scheduler's catch-up window).
        """
        ...

    async def last_tick(self, schedule: str) -> float | None:
        """The latest tick of ``schedule`` that was enqueued, or ``None``."""
        ...


@runtime_checkable
class CancelWatch(Protocol):
    """Optional: a store that tells the process running a job when it is cancelled.

    Without it a running job learns of a cancel request from its next heartbeat; with it
    the worker stops the job as soon as the request is made, from any process.
    """

    def watch_cancels(self, callback: Callable[[str], object]) -> Callable[[], None]:
        """Call ``callback(job_id)`` on each cancel request; return a function to stop."""
        ...


@runtime_checkable
class BeginsTogether(Protocol):
    """Optional: a store whose ``begin`` of several leases costs less than as many
    ``begin`` calls of one. The worker then begins the jobs it starts before the first of
    them runs with one call; other stores get a call per job."""

    def begins_together(self) -> bool:
        """A marker: ``begin`` takes a list as one write."""
        ...


@runtime_checkable
class ClaimBegins(Protocol):
    """Optional: a store whose claim can also begin the jobs the worker starts at once.

    ``begin`` is how many of the claimed jobs (the first, in ready order) the worker will
    start at once; the store may begin them in the claim's own round trip. The claims
    returned are still claims (not started): the worker's ``begin`` returns them begun,
    and a claim released or cancelled before it leaves no attempt behind.
    """

    def claims_begin(self) -> bool:
        """A marker: ``claim`` takes ``begin=``."""
        ...

    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        exclude_tasks: Collection[str] = (),
        limits: Mapping[str, FlowLimit] | None = None,
        rates: Mapping[str, RateLimit] | None = None,
        begin: int = 0,
    ) -> list[Claim]: ...


@runtime_checkable
class QueuePause(Protocol):
    """Paused queues, kept in the store: every worker sharing it obeys, across restarts.

    A claim never hands out a job of a paused queue (and ``wait_for_work`` does not count
    them as work); enqueues are accepted, and jobs already claimed run to their end.
    """

    async def pause_queue(self, queue: str) -> None:
        """Start nothing more from ``queue`` until it is resumed. Idempotent."""
        ...

    async def resume_queue(self, queue: str) -> None:
        """Let workers claim from ``queue`` again. Idempotent."""
        ...

    async def paused_queues(self) -> frozenset[str]:
        """The queues paused now."""
        ...


@runtime_checkable
class RateLimits(Protocol):
    r"""What a store that enforces :class:`RateLimit`\ s at claim also tells.

    After a claim that passed over jobs for a rate limit, ``wait_for_work`` sleeps until
    :meth:`rate_next` (or a new job, or its timeout), never polling in between.
    """

    def rate_next(self) -> float | None:
        """The store time at which the earliest job the last claim passed over for a rate
        limit may start; ``None`` if it passed over none."""
        ...

    async def rate_starts(self, group: str, rate: RateLimit) -> list[float]:
        """The recorded starts of ``group`` still within the window of ``rate``."""
        ...


@runtime_checkable
class DueCount(Protocol):
    """Optional: how many jobs are due or running, read in one atomic step.

    ``aw.join()`` polls it. Without it, join reads the per-status counts and then lists the
    scheduled jobs, two reads a job can slip between (scheduled at the first, promoted before
    the second): join then sees nothing left while a retry is about to run.
    """

    async def due_or_running(self) -> int:
        """Jobs queued, running, or scheduled with ``run_at <= now()``, at one instant."""
        ...


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """Optional: create jobs inside the application's own database transaction.

    The jobs exist if and only if that transaction commits: invisible to workers until the
    commit, gone on rollback; workers are woken after the commit (not before).
    """

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
        """Create ``jobs`` through ``connection``, an open connection or session of the app's
        (which kinds a store accepts is its own: e.g. a SQLAlchemy ``AsyncSession`` or
        ``AsyncConnection``, an asyncpg connection), inside its current transaction
        (beginning one if none is open, as the driver does). Same key rules and return
        value as :meth:`Backend.enqueue`; the returned jobs are as they will be once the
        transaction commits.

        Raises:
            EnqueueError: ``connection`` is of a kind this store cannot use, closed, or
                connected to another database than the store's.
        """
        ...


class Store(Backend, Inspector, Ticks, Protocol):
    """A backend that is also an inspector and keeps ticks (all of afterwork's own)."""


#: The ``kind`` of the marker an ``events(since=...)`` stream yields first when it cannot
#: resume: events after ``since`` were trimmed from the history (or ``since`` is not an id of
#: this store). Also yielded, on memory and SQLite, when a reader fell so far behind that its
#: buffer overflowed. The reader missed events and should reload the state it shows.
TRUNCATED = "truncated"


def truncated_event(since: str | None, at: float) -> JobEvent:
    """The marker that says "events were lost": not a job's event (``job_id`` is empty).

    ``message`` is the id the reader asked to resume after (``None`` when a live reader
    fell too far behind and lost its oldest buffered events).
    """
    return JobEvent(
        kind=TRUNCATED, job_id="", task="", queue="", status=JobStatus.QUEUED, at=at, message=since
    )


@runtime_checkable
class EventHistory(Protocol):
    """Optional: a store that keeps a bounded, ordered history of its events.

    Every event it publishes has an :attr:`~afterwork.JobEvent.id` that orders it in the
    store (memory and SQLite: increasing integers; Redis: stream ids), and a reader can
    resume after one.

    Contract: ``events(since=id)`` yields the events published after ``id``, in order, then
    live events, with none missed and none twice, including those published while the
    history is being read. If some of them are no longer kept (older than the retention)
    or ``id`` is not one of this store's ids, the stream yields a :data:`TRUNCATED` marker
    first, then live events: it never skips events silently. ``events()`` behaves as
    :meth:`Backend.events`.
    """

    @property
    def event_retention(self) -> int:
        """About how many recent events are kept (at least this many on memory and SQLite)."""
        ...

    def events(self, since: str | None = None) -> EventStream:
        """Events after ``since`` (kept ones first), then live ones; from now if ``None``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A worker's presence record, refreshed by its heartbeat.

    ``expires_at`` is ``last_seen`` plus the worker's lease: a worker that dies stops
    refreshing it and disappears from :meth:`WorkerPresence.list_workers` within its lease.

    .. versionadded:: 0.2
    """

    id: str
    host: str
    pid: int
    version: str
    queues: tuple[str, ...] | None
    """The queues it serves; ``None``: every queue."""
    concurrency: int
    running: tuple[str, ...] = ()
    """Ids of the jobs it runs now."""
    started_at: float
    last_seen: float
    expires_at: float
    services: tuple[str, ...] = ()
    """Names of the ``@aw.service`` services its process runs now (not standby singletons).

    .. versionadded:: 0.3
    """

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "queues": None if self.queues is None else list(self.queues),
            "concurrency": self.concurrency,
            "running": list(self.running),
            "started_at": self.started_at,
            "last_seen": self.last_seen,
            "expires_at": self.expires_at,
            "services": list(self.services),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerInfo:
        queues = data.get("queues")
        return cls(
            id=str(data["id"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            version=str(data.get("version", "")),
            queues=None if queues is None else tuple(str(q) for q in queues),
            concurrency=int(data.get("concurrency", 0)),
            running=tuple(str(j) for j in data.get("running", ())),
            started_at=float(data.get("started_at", 0.0)),
            last_seen=float(data.get("last_seen", 0.0)),
            expires_at=float(data.get("expires_at", 0.0)),
            services=tuple(str(s) for s in data.get("services", ())),
        )


@runtime_checkable
class WorkerPresence(Protocol):
    """Where workers announce themselves (optional: a store without it lists no workers).

    Presence is advisory: it decides nothing about jobs (leases do), so a store may keep
    it outside its job transactions.
    """

    async def announce_worker(self, info: WorkerInfo) -> None:
        """Create or replace ``info`` (keyed by ``info.id``), kept until ``info.expires_at``."""
        ...

    async def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped (nothing if it is unknown)."""
        ...

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers whose record has not expired by the store's clock, by start time."""


# -- history: per-minute counts and timings (``afterwork.history``) --------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryRow:
    """What one or more workers saw of one task on one queue during one minute.

    Rows are additive: two rows of the same ``(minute, task, queue)`` (two workers, or two
    flushes of one worker) combine by adding every count, sum and bucket count
    (:meth:`merged`). Timings are kept as sparse histograms: ``run_buckets[i]`` counts
    attempts whose run time fell in bucket ``i`` of :data:`afterwork.history.BUCKETS`
    (``(bounds[i-1], bounds[i]]``; ``i == len(bounds)`` is above the last bound).

    .. versionadded:: 0.2
    """

    minute: float
    """Start of the minute, in seconds since the epoch (a multiple of 60)."""
    task: str
    queue: str
    succeeded: int = 0
    failed: int = 0
    """Attempts that failed for good."""
    retried: int = 0
    """Attempts that failed with another attempt to follow."""
    run_sum: float = 0.0
    run_buckets: dict[int, int] = field(default_factory=dict)
    """Attempts by run-time bucket (every attempt that ended, cancelled ones too)."""
    wait_sum: float = 0.0
    wait_buckets: dict[int, int] = field(default_factory=dict)
    """Attempts by wait-time bucket (due time to start)."""

    @property
    def key(self) -> tuple[float, str, str]:
        return (self.minute, self.task, self.queue)

    def merged(self, other: HistoryRow) -> HistoryRow:
        """This row plus ``other`` (same key)."""
        return HistoryRow(
            minute=self.minute,
            task=self.task,
            queue=self.queue,
            succeeded=self.succeeded + other.succeeded,
            failed=self.failed + other.failed,
            retried=self.retried + other.retried,
            run_sum=self.run_sum + other.run_sum,
            run_buckets=_add_buckets(self.run_buckets, other.run_buckets),
            wait_sum=self.wait_sum + other.wait_sum,
            wait_buckets=_add_buckets(self.wait_buckets, other.wait_buckets),
        )


def _add_buckets(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    out = dict(a)
    for index, count in b.items():
        out[index] = out.get(index, 0) + count
    return out


@runtime_checkable
class HistoryStore(Protocol):
    """Where per-minute history is kept (optional: a store without it keeps no history).

    History is advisory, like presence: it decides nothing about jobs, so a store may keep
    it outside its job transactions, and a flush that fails is tried again later by the
    worker (or dropped at its stop) rather than failing any job.

    .. versionadded:: 0.2
    """

    async def record_history(self, rows: Sequence[HistoryRow]) -> None:
        """Add each row to the stored row of its ``(minute, task, queue)`` (created at zero).

        Counts, sums and bucket counts add up, so several workers may flush the same minute.
        One call applies all its rows or none where the store can make it so.
        """
        ...

    async def read_history(
        self,
        *,
        since: float,
        until: float,
        task: str | None = None,
        queue: str | None = None,
    ) -> list[HistoryRow]:
        """Rows with ``since <= minute < until`` (of one task, one queue if given), ordered
        by ``(minute, task, queue)``, one per key."""
        ...

    async def purge_history(self, *, before: float) -> None:
        """Delete the rows whose ``minute`` is before ``before``."""
        ...


# -- channels: messages between processes sharing a store (``aw.publish``) ------------------


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """A message published on a channel, as a subscriber receives it.

    Stores carry ``data`` as JSON text; ``aw.subscribe`` hands it out decoded. A message
    with ``missed=True`` (and no data) is a marker: this subscriber lost messages just
    before it (it fell behind its bounded buffer, or its connection was lost).
    """

    channel: str
    data: Any = None
    missed: bool = False


class MessageStream(Protocol):
    """A channel's messages, subscribed when it is handed out; ``aclose()`` ends it."""

    def __aiter__(self) -> MessageStream: ...

    async def __anext__(self) -> ChannelMessage: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Channels(Protocol):
    """Optional: publish/subscribe between every process sharing the store.

    Contract: a message is delivered at most once to each subscriber subscribed when it
    is published, in every process sharing the store, in the order its publisher
    published; publishing never blocks on subscribers; a subscriber that falls too far
    behind loses its oldest buffered messages and reads a ``missed`` marker instead.
    """

    async def publish(self, channel: str, data: str) -> None:
        """Publish ``data`` (JSON text) on ``channel``."""
        ...

    async def subscribe(self, channel: str) -> MessageStream:
        """Messages published on ``channel`` from the moment this returns."""
        ...


# -- named leases: one holder across every process sharing the store (singleton services) --


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseInfo:
    """A named lease as :meth:`Leases.list_leases` reports it (its token stays secret)."""

    name: str
    holder: str
    """What the holder said about itself when it acquired the lease (opaque to the store)."""
    acquired_at: float
    expires_at: float


@runtime_checkable
class Leases(Protocol):
    """Optional: named leases with fencing tokens (``@aw.service(singleton=True)`` uses them).

    Contract, by the store's clock (:meth:`Backend.now`); every method is one atomic step:

    * A lease is *held* while its record exists and ``now < expires_at``.
    * :meth:`acquire_lease` succeeds only when ``name`` is not held (never held, released,
      or expired); it then writes a new, unique token and ``expires_at = now + ttl``.
    * :meth:`renew_lease` and :meth:`release_lease` are *fenced*: they act only when
      ``token`` is the lease's current token, so a holder whose lease was taken over (or
      expired) changes nothing. Renewal also requires the lease still held: an expired
      lease cannot be revived, its former holder must acquire it again.
    """

    async def acquire_lease(self, name: str, holder: str, *, ttl: float) -> str | None:
        """Take ``name`` for ``ttl`` seconds if nobody holds it: its new token, else ``None``."""
        ...

    async def renew_lease(self, name: str, token: str, *, ttl: float) -> bool:
        """Set ``expires_at = now + ttl`` if ``token`` holds ``name`` now; ``False`` if not."""
        ...

    async def release_lease(self, name: str, token: str) -> bool:
        """Free ``name`` at once if ``token`` is its current token; ``False`` if not."""
        ...

    async def list_leases(self) -> list[LeaseInfo]:
        """The leases held now, by name."""
        ...
