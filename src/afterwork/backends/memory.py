"""The in-process backend: fast, exact, and gone when the process exits.

Use it in tests and for work that need not survive a restart. It implements the same
contract as the durable backends and passes the same conformance suite.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .. import _lifecycle as life
from .._lifecycle import Change, FlowLimit, RateLimit
from .._notify import Broadcaster, Notifier
from ..exceptions import ConfigurationError
from ..job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    Job,
    JobEvent,
    JobStatus,
)
from ._channels import channel_broadcaster
from .base import (
    ChannelMessage,
    Claim,
    Clock,
    EventStream,
    HeartbeatReply,
    HistoryRow,
    JobFilter,
    Lease,
    LeaseInfo,
    MessageStream,
    NewJob,
    Outcome,
    QueueStats,
    WorkerInfo,
    truncated_event,
)

__all__ = ("MemoryBackend",)


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
        self._workers: dict[str, WorkerInfo] = {}
        self._named_leases: dict[str, tuple[str, LeaseInfo]] = {}  # name -> (token, info)
        self._history: dict[tuple[float, str, str], HistoryRow] = {}
        self._jobs: dict[str, Job] = {}
        self._tokens: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        # Ready jobs per queue, in ``life.ready_order``. Delayed jobs: (run_at, sequence, id).
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
        self._wake = False
        self._flow_skipped = False
        # Rate limits: the start times of each group's attempts within its window, and the
        # jobs claimed but not started yet (job id -> group), which count as starting now.
        self._starts: dict[str, deque[float]] = {}
        self._pending: dict[str, str] = {}
        self._rate_next: float | None = None
        self._paused: set[str] = set()
        self._channels: dict[str, Broadcaster[ChannelMessage]] = {}

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
        for channel in list(self._channels.values()):
            channel.reopen()

    async def aclose(self) -> None:
        self._events.close()
        for channel in list(self._channels.values()):
            channel.close()
        self._work.notify()

    # -- channels (this process only) ----------------------------------------------------

    async def publish(self, channel: str, data: str) -> None:
        with self._lock:
            broadcaster = self._channels.get(channel)
        if broadcaster is not None:
            broadcaster.publish(ChannelMessage(channel, data))

    async def subscribe(self, channel: str) -> MessageStream:
        with self._lock:
            broadcaster = self._channels.get(channel)
            if broadcaster is None:
                broadcaster = self._channels[channel] = channel_broadcaster(channel)
        return broadcaster.subscribe()

    # -- helpers (called with the lock held) ---------------------------------------------

    def _emit(self, kind: str, job: Job, message: str | None = None) -> None:
        self._events.publish(JobEvent.of(kind, job, self._clock(), message=message))

    def _push(self, job: Job) -> None:
        if job.status is JobStatus.QUEUED:
            heapq.heappush(self._ready.setdefault(job.queue, []), (*life.ready_order(job),))
        elif job.status is JobStatus.SCHEDULED:
            heapq.heappush(self._delayed, (job.run_at, next(self._sequence), job.id))

    def _apply(self, change: Change | None, *, token: str | None = None) -> Job | None:
        """Persist what a transition decided: the record, its indexes, its event."""
        if change is None:
            return None
        new = change.job
        old = self._jobs.get(new.id)
        self._jobs[new.id] = new
        if new.status is not JobStatus.RUNNING:
            self._tokens.pop(new.id, None)
        elif token is not None:
            self._tokens[new.id] = token
        if new.key is not None:
            if new.status in TERMINAL_STATUSES:
                if self._keys.get(new.key) == new.id:
                    del self._keys[new.key]
            else:
                self._keys[new.key] = new.id
        if old is None or old.status is not new.status:
            if old is not None and old.status is JobStatus.RUNNING and self._flow_skipped:
                self._wake = True  # a flow-limited job passed over may be claimed now
            self._push(new)
            if new.status in WAITING_STATUSES:
                self._wake = True
        if change.event is not None:
            self._emit(change.event, new, change.message)
        return new

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            run_at, _, job_id = heapq.heappop(self._delayed)
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.SCHEDULED or job.run_at != run_at:
                continue
            self._apply(life.promote(job, now))

    def _held(self, job_id: str) -> tuple[Job | None, str | None]:
        return self._jobs.get(job_id), self._tokens.get(job_id)

    def _notify_if_woken(self) -> None:
        if self._wake:
            self._wake = False
            self._work.notify()

    # -- the Backend protocol ------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        created: list[Job] = []
        with self._lock:
            now = self._clock()
            for new in jobs:
                if new.key is not None and new.key in self._keys and new.debounce:
                    holder = self._jobs[self._keys[new.key]]
                    change = life.debounce(holder, new, now)
                    if change.job.status is JobStatus.SCHEDULED:
                        pushed = self._apply(change)
                        assert pushed is not None
                        self._push(pushed)  # its new run_at (the old entry goes stale)
                        created.append(pushed)
                        continue
                    self._apply(change)  # the running holder gives up its key
                    job = self._apply(life.create(new, now))
                    assert job is not None
                    created.append(job)
                elif new.key is not None and new.key in self._keys:
                    created.append(self._jobs[self._keys[new.key]])
                elif new.id in self._jobs:
                    created.append(self._jobs[new.id])
                else:
                    job = self._apply(life.create(new, now))
                    assert job is not None
                    created.append(job)
        self._notify_if_woken()
        return created

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        with self._lock:
            token = os.urandom(16).hex()
            change = life.start_now(job, worker=worker, now=self._clock(), lease_ttl=lease_ttl)
            started = self._apply(change, token=token)
            assert started is not None
            return Claim(started, token)

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
        claims: list[Claim] = []
        with self._lock:
            now = self._clock()
            self._promote(now)
            used = self._flow_used(limits) if limits else None
            self._rate_next = None
            pending = self._rate_pending() if rates else Counter[str]()
            names = [
                q
                for q in (self._ready if queues is None else queues)
                if q in self._ready and q not in self._paused
            ]
            skipped: list[tuple[str, tuple[int, int, str]]] = []
            while len(claims) < limit:
                best: tuple[tuple[int, int, str], str] | None = None
                for name in names:
                    heap = self._ready[name]
                    while heap:
                        job = self._jobs.get(heap[0][2])
                        if (
                            job is None
                            or job.status is not JobStatus.QUEUED
                            or life.ready_order(job) != heap[0]
                        ):
                            heapq.heappop(heap)  # stale: the job moved on (or came back later)
                            continue
                        if (
                            job.task in exclude_tasks
                            or (used is not None and self._flow_full(job, limits, used))
                            or (rates and self._rate_full(job, rates, now, pending))
                        ):
                            skipped.append((name, heapq.heappop(heap)))
                            continue
                        break
                    if heap and (best is None or heap[0] < best[0]):
                        best = (heap[0], name)
                if best is None:
                    break
                heapq.heappop(self._ready[best[1]])
                token = os.urandom(16).hex()
                change = life.claim(
                    self._jobs[best[0][2]], worker=worker, now=now, lease_ttl=lease_ttl
                )
                claimed = self._apply(change, token=token)
                assert claimed is not None
                claims.append(Claim(claimed, token))
                if used is not None and limits and (flow := limits.get(claimed.task)):
                    used[life.flow_group(claimed.task, claimed.kwargs, flow)] += 1
                if rates and (rate := rates.get(claimed.task)):
                    group = life.rate_group(claimed.task, claimed.kwargs, rate)
                    self._pending[claimed.id] = group
                    pending[group] += 1
            for name, entry in skipped:
                heapq.heappush(self._ready[name], entry)
            self._flow_skipped = (used is not None or bool(rates)) and bool(skipped)
        return claims

    def _rate_pending(self) -> Counter[str]:
        """Jobs claimed and not started, per rate group (lock held); others are dropped."""
        counts: Counter[str] = Counter()
        for job_id, group in list(self._pending.items()):
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING or job.started_at is not None:
                del self._pending[job_id]  # released or recovered before it started
            else:
                counts[group] += 1
        return counts

    def _rate_full(
        self, job: Job, rates: Mapping[str, RateLimit], now: float, pending: Counter[str]
    ) -> bool:
        """Whether ``job``'s rate group has no start left in its window (lock held)."""
        rate = rates.get(job.task)
        if rate is None:
            return False
        group = life.rate_group(job.task, job.kwargs, rate)
        starts = self._window(group, rate, now)
        waiting = pending[group]
        tail = list(itertools.islice(reversed(starts), max(rate.limit - waiting, 0)))
        at = life.rate_next_start(tail, now=now, rate=rate, pending=waiting, begun=len(starts))
        if at is None:
            return False
        self._rate_next = at if self._rate_next is None else min(self._rate_next, at)
        return True

    def _window(self, group: str, rate: RateLimit, now: float) -> deque[float]:
        """The group's starts still in the window, oldest first (lock held)."""
        starts = self._starts.setdefault(group, deque())
        while starts and life.rate_expired(starts[0], now=now, rate=rate):
            starts.popleft()
        return starts

    def rate_next(self) -> float | None:
        """When a job the last claim passed over for a rate limit may start (store time)."""
        return self._rate_next

    async def rate_starts(self, group: str, rate: RateLimit) -> list[float]:
        """The starts of a rate group within its window (claimed, not started: now)."""
        with self._lock:
            now = self._clock()
            starts = list(self._window(group, rate, now))
            return starts + [now] * self._rate_pending()[group]

    def _flow_used(self, limits: Mapping[str, FlowLimit]) -> Counter[str]:
        """Running jobs per flow group, counted from the records (lock held)."""
        used: Counter[str] = Counter()
        for job_id in self._tokens:
            job = self._jobs[job_id]
            flow = limits.get(job.task)
            if flow is not None:
                used[life.flow_group(job.task, job.kwargs, flow)] += 1
        return used

    @staticmethod
    def _flow_full(job: Job, limits: Mapping[str, FlowLimit] | None, used: Counter[str]) -> bool:
        flow = limits.get(job.task) if limits else None
        return flow is not None and used[life.flow_group(job.task, job.kwargs, flow)] >= flow.limit

    async def begin(self, leases: Sequence[Lease]) -> list[Job | None]:
        with self._lock:
            now = self._clock()
            begun: list[Job | None] = []
            for lease in leases:
                job, held = self._held(lease.job_id)
                change = (
                    None if job is None else life.begin(job, held=held, token=lease.token, now=now)
                )
                started = self._apply(change)
                group = self._pending.pop(lease.job_id, None) if started is not None else None
                if group is not None and started is not None:
                    self._starts.setdefault(group, deque()).append(started.started_at or now)
                begun.append(started)
            return begun

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        lost: set[str] = set()
        cancel: set[str] = set()
        with self._lock:
            now = self._clock()
            for lease in leases:
                job, held = self._held(lease.job_id)
                renewed = (
                    None
                    if job is None
                    else life.heartbeat(
                        job, held=held, token=lease.token, now=now, lease_ttl=lease_ttl
                    )
                )
                if renewed is None:
                    lost.add(lease.job_id)
                    continue
                self._jobs[renewed.id] = renewed
                if renewed.cancel_requested:
                    cancel.add(renewed.id)
        return HeartbeatReply(lost=frozenset(lost), cancel=frozenset(cancel))

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        with self._lock:
            job, held = self._held(lease.job_id)
            change = (
                None
                if job is None
                else life.finish(
                    job, held=held, token=lease.token, outcome=outcome, now=self._clock()
                )
            )
            done = self._apply(change)
        self._notify_if_woken()
        return done

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        with self._lock:
            job, held = self._held(lease.job_id)
            change = (
                None
                if job is None
                else life.progress(
                    job, held=held, token=lease.token, progress=progress, message=message
                )
            )
            return self._apply(change) is not None

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        recovered: list[Job] = []
        with self._lock:
            now = self._clock()
            expired = [job for job in self._jobs.values() if life.lease_expired(job, now)]
            for job in sorted(expired, key=life.recovery_order):
                change = life.recover(job, now=now, max_recoveries=max_recoveries)
                back = self._apply(change)
                assert back is not None
                recovered.append(back)
        self._notify_if_woken()
        return recovered

    async def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    async def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return self._apply(life.cancel(job, now=self._clock())) or job

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        ticket = self._work.ticket()
        if self._flow_skipped:
            # The last claim passed over jobs at a fleet limit: they are queued, but
            # claiming again at once would spin. Wait for a running job to end (or a new
            # job) instead, or for the next start a rate limit allows.
            if self._rate_next is not None:
                timeout = min(timeout, max(self._rate_next - self._clock(), 0.0))
            await self._work.wait(ticket, timeout)
            return
        with self._lock:
            now = self._clock()
            self._promote(now)
            names = list(self._ready) if queues is None else queues
            for name in names:
                if name in self._paused:
                    continue
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

    async def due_or_running(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(
                1
                for job in self._jobs.values()
                if job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
                or (job.status is JobStatus.SCHEDULED and job.run_at <= now)
            )

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
            if job is None:
                return None
            key_free = job.key is None or job.key not in self._keys
            retried = self._apply(life.retry(job, now=self._clock(), key_free=key_free))
        self._notify_if_woken()
        return retried or job

    async def purge(self, *, older_than: float | None = None) -> int:
        with self._lock:
            now = self._clock()
            doomed = [
                job
                for job in self._jobs.values()
                if life.purgeable(job, now=now, older_than=older_than)
            ]
            for job in doomed:
                del self._jobs[job.id]
        return len(doomed)

    # -- the QueuePause protocol ---------------------------------------------------------

    async def pause_queue(self, queue: str) -> None:
        with self._lock:
            self._paused.add(queue)

    async def resume_queue(self, queue: str) -> None:
        with self._lock:
            self._paused.discard(queue)
        self._work.notify()

    async def paused_queues(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._paused)

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

    # -- worker presence -----------------------------------------------------------------

    async def announce_worker(self, info: WorkerInfo) -> None:
        with self._lock:
            self._workers[info.id] = info

    async def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        with self._lock:
            now = self._clock()
            for gone in [w.id for w in self._workers.values() if w.expires_at <= now]:
                del self._workers[gone]
            return sorted(self._workers.values(), key=lambda w: (w.started_at, w.id))

    # -- named leases (the Leases protocol) ----------------------------------------------

    def _held_lease(self, name: str) -> tuple[str, LeaseInfo] | None:
        entry = self._named_leases.get(name)
        if entry is not None and entry[1].expires_at <= self._clock():
            del self._named_leases[name]
            return None
        return entry

    async def acquire_lease(self, name: str, holder: str, *, ttl: float) -> str | None:
        with self._lock:
            if self._held_lease(name) is not None:
                return None
            now = self._clock()
            token = os.urandom(16).hex()
            info = LeaseInfo(name=name, holder=holder, acquired_at=now, expires_at=now + ttl)
            self._named_leases[name] = (token, info)
            return token

    async def renew_lease(self, name: str, token: str, *, ttl: float) -> bool:
        with self._lock:
            entry = self._held_lease(name)
            if entry is None or entry[0] != token:
                return False
            info = replace(entry[1], expires_at=self._clock() + ttl)
            self._named_leases[name] = (token, info)
            return True

    async def release_lease(self, name: str, token: str) -> bool:
        with self._lock:
            entry = self._named_leases.get(name)
            if entry is None or entry[0] != token:
                return False
            del self._named_leases[name]
            return True

    async def list_leases(self) -> list[LeaseInfo]:
        with self._lock:
            for name in list(self._named_leases):
                self._held_lease(name)
            return [self._named_leases[name][1] for name in sorted(self._named_leases)]

    # -- history -------------------------------------------------------------------------

    async def record_history(self, rows: Sequence[HistoryRow]) -> None:
        with self._lock:
            for row in rows:
                held = self._history.get(row.key)
                self._history[row.key] = row if held is None else held.merged(row)

    async def read_history(
        self,
        *,
        since: float,
        until: float,
        task: str | None = None,
        queue: str | None = None,
    ) -> list[HistoryRow]:
        with self._lock:
            found = [
                row
                for row in self._history.values()
                if since <= row.minute < until
                and (task is None or row.task == task)
                and (queue is None or row.queue == queue)
            ]
        return sorted(found, key=lambda row: row.key)

    async def purge_history(self, *, before: float) -> None:
        with self._lock:
            for key in [key for key in self._history if key[0] < before]:
                del self._history[key]
