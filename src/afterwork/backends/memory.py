"""The in-process backend: fast, exact, and gone when the process exits.

Use it in tests and for work that need not survive a restart. It implements the same
contract as the durable backends and passes the same conformance suite.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._notify import Broadcaster, Notifier
from ..exceptions import ConfigurationError
from ..job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    Job,
    JobError,
    JobEvent,
    JobStatus,
    check_transition,
)
from .base import (
    Claim,
    Clock,
    EventStream,
    HeartbeatReply,
    JobFilter,
    Lease,
    NewJob,
    Outcome,
    QueueStats,
    truncated_event,
)

__all__ = ("MemoryBackend",)

WORKER_LOST = "afterwork.WorkerLost"


class MemoryBackend:
    """Jobs in a dict, queues in heaps, one lock. Thread-safe and loop-agnostic.

    Args:
        clock: seconds since the epoch (default ``time.time``; tests pass a fake one).
        event_retention: how many recent events are kept, so that ``events(since=id)`` can
            resume a reader (``memory://?event_retention=N``). Event ids are ``1``, ``2``,
            … in publishing order.
    """

    def __init__(self, *, clock: Clock | None = None, event_retention: int = 10_000) -> None:
        if event_retention < 1:
            raise ConfigurationError("event_retention must be at least 1")
        self._clock: Clock = clock or time.time
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._tokens: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        # Ready jobs per queue: (-priority, sequence, id). Delayed jobs: (run_at, sequence, id).
        # Entries are deleted lazily: an entry whose job moved on is skipped when popped.
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._ticks: dict[str, float] = {}
        self._tick_marks: set[tuple[str, float]] = set()
        self.event_retention: int = event_retention
        self._events: Broadcaster[JobEvent] = Broadcaster(
            history=event_retention,
            stamp=lambda event, position: replace(event, id=str(position)),
            lost=lambda: truncated_event(None, self._clock()),
        )
        self._work = Notifier()

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None, **options: Any) -> MemoryBackend:
        """``memory://``; ``?event_retention=N`` sets that option."""
        for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if name != "event_retention":
                raise ConfigurationError(f"unknown memory URL option {name!r} in {url!r}")
            try:
                options.setdefault(name, int(value))
            except ValueError:
                raise ConfigurationError(f"bad value for {name!r} in {url!r}") from None
        return cls(clock=clock, **options)

    def __repr__(self) -> str:
        return f"MemoryBackend(jobs={len(self._jobs)})"

    # -- lifecycle -----------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    async def open(self) -> None:
        self._events.reopen()

    async def aclose(self) -> None:
        self._events.close()
        self._work.notify()

    # -- helpers (called with the lock held) ---------------------------------------------

    def _emit(self, kind: str, job: Job, message: str | None = None) -> None:
        self._events.publish(JobEvent.of(kind, job, self._clock(), message=message))

    def _push(self, job: Job) -> None:
        if job.status is JobStatus.QUEUED:
            heap = self._ready.setdefault(job.queue, [])
            heapq.heappush(heap, (-job.priority, next(self._sequence), job.id))
        elif job.status is JobStatus.SCHEDULED:
            heapq.heappush(self._delayed, (job.run_at, next(self._sequence), job.id))

    def _set(self, job: Job, new: Job) -> Job:
        if job.status is not new.status:
            check_transition(job.status, new.status)
        self._jobs[new.id] = new
        if new.status in TERMINAL_STATUSES and new.key is not None:
            if self._keys.get(new.key) == new.id:
                del self._keys[new.key]
        return new

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            run_at, _, job_id = heapq.heappop(self._delayed)
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.SCHEDULED or job.run_at != run_at:
                continue
            self._push(self._set(job, replace(job, status=JobStatus.QUEUED)))

    def _owned(self, lease: Lease) -> Job | None:
        job = self._jobs.get(lease.job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            return None
        if self._tokens.get(lease.job_id) != lease.token:
            return None
        return job

    def _create(self, new: NewJob, now: float) -> Job:
        due = now + max(new.delay, 0.0)
        return Job(
            id=new.id,
            task=new.task,
            queue=new.queue,
            status=JobStatus.SCHEDULED if new.delay > 0 else JobStatus.QUEUED,
            args=list(new.args),
            kwargs=dict(new.kwargs),
            priority=new.priority,
            max_attempts=new.max_attempts,
            key=new.key,
            created_at=now,
            run_at=due,
            timeout=new.timeout,
            result_ttl=new.result_ttl,
        )

    # -- the Backend protocol ------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        created: list[Job] = []
        with self._lock:
            now = self._clock()
            for new in jobs:
                if new.key is not None and new.key in self._keys:
                    created.append(self._jobs[self._keys[new.key]])
                    continue
                if new.id in self._jobs:
                    created.append(self._jobs[new.id])
                    continue
                job = self._create(new, now)
                self._jobs[job.id] = job
                if job.key is not None:
                    self._keys[job.key] = job.id
                self._push(job)
                self._emit("enqueued", job)
                created.append(job)
        self._work.notify()
        return created

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        with self._lock:
            now = self._clock()
            token = secrets.token_hex(16)
            created = replace(
                self._create(replace(job, delay=0.0), now),
                status=JobStatus.RUNNING,
                attempts=1,
                started_at=now,
                worker=worker,
                lease_expires_at=now + lease_ttl,
            )
            self._jobs[created.id] = created
            self._tokens[created.id] = token
            self._emit("started", created)
            return Claim(created, token)

    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        exclude_tasks: Collection[str] = (),
    ) -> list[Claim]:
        claims: list[Claim] = []
        with self._lock:
            now = self._clock()
            self._promote(now)
            names = list(self._ready) if queues is None else [q for q in queues if q in self._ready]
            skipped: list[tuple[str, tuple[int, int, str]]] = []
            while len(claims) < limit:
                best: tuple[tuple[int, int, str], str] | None = None
                for name in names:
                    heap = self._ready[name]
                    while heap:
                        job = self._jobs.get(heap[0][2])
                        if job is None or job.status is not JobStatus.QUEUED:
                            heapq.heappop(heap)  # stale entry
                            continue
                        if job.task in exclude_tasks:
                            skipped.append((name, heapq.heappop(heap)))
                            continue
                        break
                    if heap and (best is None or heap[0] < best[0]):
                        best = (heap[0], name)
                if best is None:
                    break
                heapq.heappop(self._ready[best[1]])
                job = self._jobs[best[0][2]]
                token = secrets.token_hex(16)
                job = self._set(
                    job,
                    replace(
                        job,
                        status=JobStatus.RUNNING,
                        attempts=job.attempts + 1,
                        started_at=now,
                        worker=worker,
                        lease_expires_at=now + lease_ttl,
                        cancel_requested=False,
                    ),
                )
                self._tokens[job.id] = token
                self._emit("started", job)
                claims.append(Claim(job, token))
            for name, entry in skipped:
                heapq.heappush(self._ready[name], entry)
        return claims

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        lost: set[str] = set()
        cancel: set[str] = set()
        with self._lock:
            now = self._clock()
            for lease in leases:
                job = self._owned(lease)
                if job is None:
                    lost.add(lease.job_id)
                    continue
                self._jobs[job.id] = replace(job, lease_expires_at=now + lease_ttl)
                if job.cancel_requested:
                    cancel.add(job.id)
        return HeartbeatReply(lost=frozenset(lost), cancel=frozenset(cancel))

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        with self._lock:
            job = self._owned(lease)
            if job is None:
                return None
            now = self._clock()
            common: dict[str, Any] = {
                "worker": None,
                "lease_expires_at": None,
                "cancel_requested": False,
            }
            status = outcome.status
            if status is JobStatus.SUCCEEDED:
                new = replace(job, status=status, result=outcome.result, finished_at=now, **common)
                kind = "succeeded"
            elif status is JobStatus.FAILED:
                new = replace(job, status=status, error=outcome.error, finished_at=now, **common)
                kind = "failed"
            elif status is JobStatus.CANCELLED:
                new = replace(job, status=status, error=outcome.error, finished_at=now, **common)
                kind = "cancelled"
            elif status is JobStatus.SCHEDULED:
                new = replace(
                    job, status=status, error=outcome.error, run_at=now + outcome.delay, **common
                )
                kind = "retrying"
            elif status is JobStatus.QUEUED:
                new = replace(
                    job, status=status, attempts=max(job.attempts - 1, 0), run_at=now, **common
                )
                kind = "released"
            else:
                raise ValueError(f"not an outcome: {status!r}")
            self._set(job, new)
            del self._tokens[job.id]
            self._push(new)
            self._emit(kind, new)
        if new.status in WAITING_STATUSES:
            self._work.notify()
        return new

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        with self._lock:
            job = self._owned(lease)
            if job is None:
                return False
            job = replace(job, progress=progress, progress_message=message)
            self._jobs[job.id] = job
            self._emit("progress", job, message)
            return True

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        recovered: list[Job] = []
        with self._lock:
            now = self._clock()
            for job in list(self._jobs.values()):
                if job.status is not JobStatus.RUNNING or job.lease_expires_at is None:
                    continue
                if job.lease_expires_at > now:
                    continue
                recoveries = job.recoveries + 1
                message = f"the worker {job.worker} stopped renewing its lease"
                if recoveries > max_recoveries or job.max_attempts <= 0:
                    error = JobError.from_message(
                        WORKER_LOST, f"{message}; given up after {recoveries} recoveries"
                    )
                    new = replace(
                        job,
                        status=JobStatus.FAILED,
                        recoveries=recoveries,
                        error=error,
                        finished_at=now,
                        worker=None,
                        lease_expires_at=None,
                    )
                    kind = "failed"
                else:
                    new = replace(
                        job,
                        status=JobStatus.QUEUED,
                        recoveries=recoveries,
                        error=JobError.from_message(WORKER_LOST, message),
                        run_at=now,
                        worker=None,
                        lease_expires_at=None,
                    )
                    kind = "recovered"
                self._set(job, new)
                self._tokens.pop(job.id, None)
                self._push(new)
                self._emit(kind, new)
                recovered.append(new)
        if recovered:
            self._work.notify()
        return recovered

    async def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    async def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in TERMINAL_STATUSES:
                return job
            if job.status is JobStatus.RUNNING:
                job = replace(job, cancel_requested=True)
                self._jobs[job.id] = job
                self._emit("cancel_requested", job)
                return job
            job = self._set(
                job, replace(job, status=JobStatus.CANCELLED, finished_at=self._clock())
            )
            self._emit("cancelled", job)
            return job

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        ticket = self._work.ticket()
        with self._lock:
            now = self._clock()
            self._promote(now)
            names = list(self._ready) if queues is None else queues
            for name in names:
                for _, _, job_id in self._ready.get(name, ()):
                    job = self._jobs.get(job_id)
                    if job is not None and job.status is JobStatus.QUEUED:
                        return
            if self._delayed:
                timeout = min(timeout, max(self._delayed[0][0] - now, 0.0))
        await self._work.wait(ticket, timeout)

    def events(self, since: str | None = None) -> EventStream:
        """Events from now on; with ``since``, first the kept events after that id.

        If events after ``since`` are no longer kept (or ``since`` is not an id of this
        store), a ``truncated`` marker comes first instead, then live events.
        """
        if since is None:
            return self._events.subscribe()
        after = int(since) if since.isdigit() else -1
        gap = truncated_event(since, self._clock())
        return self._events.subscribe(after=after, gap=gap)

    # -- the Inspector protocol ----------------------------------------------------------

    async def list_jobs(self, filter: JobFilter) -> list[Job]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)
        statuses = set(filter.statuses)
        selected: list[Job] = []
        for job in jobs:
            if filter.before is not None and job.id >= filter.before:
                continue
            if statuses and job.status not in statuses:
                continue
            if filter.queue is not None and job.queue != filter.queue:
                continue
            if filter.task is not None and job.task != filter.task:
                continue
            selected.append(job)
            if len(selected) >= filter.limit:
                break
        return selected

    async def stats(self) -> list[QueueStats]:
        with self._lock:
            now = self._clock()
            by_queue: dict[str, dict[JobStatus, int]] = {}
            oldest: dict[str, float] = {}
            for job in self._jobs.values():
                counts = by_queue.setdefault(job.queue, dict.fromkeys(JobStatus, 0))
                counts[job.status] += 1
                if job.status in WAITING_STATUSES and job.run_at <= now:
                    oldest[job.queue] = min(oldest.get(job.queue, job.run_at), job.run_at)
        return [
            QueueStats(queue=name, counts=counts, oldest_waiting_at=oldest.get(name))
            for name, counts in sorted(by_queue.items())
        ]

    async def retry(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                return job
            key = job.key
            if key is not None and key in self._keys:
                key = None  # another unfinished job holds the key now
            new = self._set(
                job,
                replace(
                    job,
                    status=JobStatus.QUEUED,
                    attempts=0,
                    recoveries=0,
                    key=key,
                    run_at=self._clock(),
                    started_at=None,
                    finished_at=None,
                    result=None,
                    progress=None,
                    progress_message=None,
                ),
            )
            if key is not None:
                self._keys[key] = new.id
            self._push(new)
            self._emit("retried", new)
        self._work.notify()
        return new

    async def purge(self, *, older_than: float | None = None) -> int:
        with self._lock:
            now = self._clock()
            doomed = [
                job
                for job in self._jobs.values()
                if job.status in TERMINAL_STATUSES
                and job.finished_at is not None
                and (
                    (older_than is not None and job.finished_at <= now - older_than)
                    or (job.result_ttl is not None and job.finished_at + job.result_ttl <= now)
                )
            ]
            for job in doomed:
                del self._jobs[job.id]
        return len(doomed)

    # -- the Ticks protocol ---------------------------------------------------------------

    async def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> Job | None:
        with self._lock:
            if (schedule, tick) in self._tick_marks:
                return None
            self._tick_marks.add((schedule, tick))
            self._ticks[schedule] = max(self._ticks.get(schedule, tick), tick)
            (created,) = await self.enqueue([job])
            return created

    async def last_tick(self, schedule: str) -> float | None:
        with self._lock:
            return self._ticks.get(schedule)

    def _active_count(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.status in ACTIVE_STATUSES)
