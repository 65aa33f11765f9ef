"""A job's life, decided once: every transition as a pure function of the model.

Each store (memory, SQLite, Redis, PostgreSQL) loads a record and the lease token it holds
for it, calls one of these functions, and persists what comes back atomically (one
transaction, or one script that compares the token before it writes). A store keeps its
indexes and its clock; it never decides a transition itself. The model-based test in
``tests/backends/test_model.py`` drives every store and this module side by side and
requires them to agree on every state, attempt count, fencing refusal and event.

Claiming and starting are two steps. A claim gives a worker the lease (the job shows
``running`` with ``started_at`` unset); :func:`begin` marks the attempt as started right
before the job's code runs. Only a started attempt is charged when its worker dies: jobs a
worker had only prefetched go back to the queue uncharged, ahead of newer work.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ._records import evolver, filler, lister, maker
from .job import (
    MAX_TIMELINE,
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    Job,
    JobAttempt,
    JobError,
    JobOwner,
    JobStatus,
    check_transition,
)

__all__ = (
    "MALFORMED",
    "WORKER_LOST",
    "Change",
    "Claim",
    "FlowLimit",
    "Lease",
    "NewJob",
    "Outcome",
    "RateLimit",
    "begin",
    "cancel",
    "claim",
    "create",
    "created_job",
    "created_jobs",
    "debounce",
    "evolve",
    "finish",
    "flow_group",
    "heartbeat",
    "job_from_values",
    "lease_expired",
    "make_new_job",
    "progress",
    "promote",
    "purgeable",
    "quarantine",
    "rate_group",
    "rate_next_start",
    "ready_order",
    "recover",
    "recovery_order",
    "retry",
    "start_now",
    "waiting_reason",
)

#: The error type of an attempt whose worker died (its lease expired).
WORKER_LOST = "afterwork.WorkerLost"
#: The error type of a stored record that cannot be read as a job.
MALFORMED = "afterwork.MalformedRecord"


# -- the records a store is handed -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job to create. Arguments are already validated and JSON-ready."""

    id: str
    task: str
    queue: str = "default"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 1
    """``retries + 1``. 0 marks a job run in-process only: recovery fails it, never requeues it."""
    key: str | None = None
    delay: float = 0.0
    """Seconds from the store's now until the job is due (0: queued at once)."""
    timeout: float | None = None
    result_ttl: float | None = None
    debounce: bool = False
    """A debounced enqueue: a waiting job holding ``key`` takes these arguments and is
    pushed back to ``delay`` from now instead of a new job being made (:func:`debounce`)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Small string metadata stored with the job (:attr:`Job.headers`); an enqueue
    middleware may add to it (:attr:`afterwork.JobCall.headers`) before the job is stored."""


#: ``NewJob(...)`` (the same keywords, but for ``headers``) at about half its cost:
#: ``Afterwork.build_job`` makes one per job of a batch.
make_new_job: Callable[..., NewJob] = maker(
    NewJob,
    ("id", "task", "queue", "args", "kwargs", "priority", "max_attempts", "key", "delay",
     "timeout", "result_ttl", "debounce"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on a claimed job."""

    job_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed job and the token that proves the claim."""

    job: Job
    token: str

    @property
    def lease(self) -> Lease:
        return _make_lease(self.job.id, self.token)


# ``Lease(...)`` and ``Claim(...)`` without the frozen ``__init__``: a worker makes two
# leases and a claim per job.
_make_lease: Callable[[str, str], Lease] = maker(Lease, ("job_id", "token"))
make_claim: Callable[[Job, str], Claim] = maker(Claim, ("job", "token"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How an attempt ended. Build one with the class methods."""

    status: JobStatus
    result: Any = None
    error: JobError | None = None
    delay: float = 0.0
    """For a retry: seconds from the store's now until the next attempt is due."""

    @classmethod
    def succeeded(cls, result: Any = None) -> Outcome:
        return cls(status=JobStatus.SUCCEEDED, result=result)

    @classmethod
    def failed(cls, error: JobError) -> Outcome:
        return cls(status=JobStatus.FAILED, error=error)

    @classmethod
    def retry(cls, error: JobError, delay: float) -> Outcome:
        return cls(status=JobStatus.SCHEDULED, error=error, delay=max(delay, 0.0))

    @classmethod
    def cancelled(cls, error: JobError | None = None) -> Outcome:
        return cls(status=JobStatus.CANCELLED, error=error)

    @classmethod
    def released(cls) -> Outcome:
        """Back to the queue without spending an attempt (graceful stop, or never started)."""
        return cls(status=JobStatus.QUEUED)


@dataclass(frozen=True, slots=True)
class FlowLimit:
    """A fleet-wide cap on a task's running jobs, enforced by the store when it claims.

    ``limit`` jobs of the task may hold a lease at once across every process sharing the
    store; with ``key`` (the name of a task argument, stored among the job's keyword
    arguments) the cap is per value of that argument. A claim counts the jobs its store
    records as ``running``, so the slots of a dead worker free when its leases are
    recovered.
    """

    limit: int
    key: str | None = None


def flow_group(task: str, kwargs: dict[str, Any], limit: FlowLimit | RateLimit) -> str:
    """The group whose running jobs a :class:`FlowLimit` counts (or whose starts a
    :class:`RateLimit` counts): the task, or task + key value."""
    if limit.key is None:
        return task
    return f"{task}\x1f{json.dumps(kwargs.get(limit.key), separators=(',', ':'))}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` attempts started per ``per`` seconds across the fleet (per value
    of ``key``).

    ``@aw.task(rate_limit=RateLimit(10, per=60.0, key="api_host"))``. The store enforces
    it when it hands out jobs, in the same atomic step as the claim, with a sliding log per
    group: the time each attempt started (:func:`begin`), plus the jobs claimed and not
    started yet, which count as starting now. A claim passes over a job whose group has
    ``limit`` such starts within the last ``per`` seconds (:func:`rate_next_start`). The
    log is exact: no window of ``per`` seconds ever holds more than ``limit`` recorded
    starts (``started_at``). Work over the limit waits queued.
    """

    limit: int
    per: float
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(
                f"RateLimit: the limit must be an integer of at least 1, not {self.limit!r}"
            )
        if (
            isinstance(self.per, bool)
            or not isinstance(self.per, int | float)
            or not math.isfinite(self.per)
            or self.per <= 0
        ):
            raise ValueError(
                f"RateLimit: per (the window, in seconds) must be positive, not {self.per!r}"
            )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ValueError(
                f"RateLimit: key must be the name of a task argument, not {self.key!r}"
            )


def rate_group(task: str, kwargs: dict[str, Any], rate: RateLimit) -> str:
    """The group whose starts a :class:`RateLimit` counts: the task, or task + key value."""
    return flow_group(task, kwargs, rate)


def rate_next_start(
    starts: list[float],
    *,
    now: float,
    rate: RateLimit,
    pending: int = 0,
    begun: int | None = None,
) -> float | None:
    """Whether one more job of a group may be claimed at ``now`` (the sliding log's decision).

    ``starts`` are the times the group's attempts started (any order; those that left the
    window, ``start + per <= now``, are ignored); ``pending`` counts its jobs claimed and
    not started yet, which count as starting ``now`` (each will start at ``now`` or
    later). A store may pass only the most recent starts (at least ``limit - pending`` of
    them, or none while ``begun + pending < limit``) with ``begun``, how many are in the
    window. ``None``: a claim at ``now`` is admitted (the store counts it as pending, and
    records its start time when it begins). Otherwise the earliest store time at which
    one may be: the ``limit``-th most recent start (pending ones being ``now``) plus ``per``.

    Why this holds every window: were ``limit + 1`` starts in one window, the last of them
    to be claimed saw, at its claim, each of the others started within ``per`` before it,
    or pending; so it was not admitted.
    """
    recent = sorted(s for s in starts if s + rate.per > now)
    count = len(recent) if begun is None else begun
    if count + max(pending, 0) < rate.limit:
        return None
    k = rate.limit - max(pending, 0)  # the k-th most recent begun start bounds the window
    if k <= 0:
        return now + rate.per
    return max(recent[-k], now - rate.per) + rate.per


def rate_expired(start: float, *, now: float, rate: RateLimit) -> bool:
    """Whether a recorded start has left the window (a store may forget it)."""
    return start + rate.per <= now


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition produced: the new record and the event to publish (if any)."""

    job: Job
    event: str | None
    message: str | None = None


# -- helpers ---------------------------------------------------------------------------

_JOB_FIELDS = tuple(f.name for f in fields(Job))
assert not hasattr(Job, "__post_init__"), "evolve() would skip Job.__post_init__"

evolve: Callable[..., Job] = evolver(Job)
"""``evolve(job, **changes)``: ``dataclasses.replace(job, **changes)`` at a third of its cost.

Every claim, start and finish makes one or two new records: ``replace`` builds a dict of
all 29 fields and calls the frozen ``__init__``, which a worker paid 2-3 times per job.
``Job`` has no ``__post_init__`` and no ``init=False`` field, so copying the slots (unrolled)
and setting the changed ones builds the same record. An unknown field is a ``TypeError``.
"""

_fill_job: Callable[[Sequence[Any]], Job] = filler(Job)


def job_from_values(values: tuple[Any, ...]) -> Job:
    """A ``Job`` from all its fields' values, in field order (``dataclasses.fields(Job)``).

    For a store's record reader, which builds a job per claim, start and finish: the
    keyword constructor of the frozen dataclass costs about twice as much.
    """
    if len(values) != len(_JOB_FIELDS):
        raise TypeError(f"Job has {len(_JOB_FIELDS)} fields, not {len(values)}")
    return _fill_job(values)


def _move(job: Job, status: JobStatus, **changes: Any) -> Job:
    if status is not job.status:
        check_transition(job.status, status)
    return evolve(job, status=status, **changes)


def _owns(job: Job, held: str | None, token: str) -> bool:
    return job.status is JobStatus.RUNNING and held is not None and held == token


def _ended(job: Job, outcome: str, error: JobError | None, now: float) -> tuple[JobAttempt, ...]:
    """The timeline with the attempt that just ended (``job`` as it ran) appended."""
    attempt = JobAttempt(
        number=job.attempts,
        started_at=job.started_at,
        ended_at=now,
        worker=job.worker,
        outcome=outcome,
        error=error,
    )
    return (*job.timeline, attempt)[-MAX_TIMELINE:]


_LEASE_CLEARED: dict[str, Any] = {
    "worker": None,
    "lease_expires_at": None,
    "cancel_requested": False,
}


def ready_order(job: Job) -> tuple[int, int, str]:
    """The order in which due jobs are claimed: priority first, then due time, then age.

    Due times compare at millisecond resolution (what every store can index exactly);
    ties go to the older id (ids sort by creation time).
    """
    return (-job.priority, math.floor(job.run_at * 1000), job.id)


# -- transitions -----------------------------------------------------------------------


def create(new: NewJob, now: float) -> Change:
    """A new job: ``queued``, or ``scheduled`` when it has a delay."""
    return Change(created_job(new, now), "enqueued")


def created_job(
    new: NewJob, now: float, *, created_now: bool | None = None, owner: JobOwner | None = None
) -> Job:
    """The job :func:`create` makes; ``created_now`` and ``owner`` as an enqueue returns
    it (a store that knows its caller makes it once, not once and then a copy)."""
    delay = new.delay if new.delay > 0 else 0.0
    return _make_created(
        id=new.id,
        task=new.task,
        queue=new.queue,
        status=JobStatus.SCHEDULED if delay > 0 else JobStatus.QUEUED,
        args=list(new.args),
        kwargs=dict(new.kwargs),
        priority=new.priority,
        max_attempts=new.max_attempts,
        key=new.key,
        created_at=now,
        run_at=now + delay,
        timeout=new.timeout,
        result_ttl=new.result_ttl,
        headers=dict(new.headers),
        created_now=created_now,
        _owner=owner,
    )


#: ``Job(...)`` with the fields of a new job, at about half its cost (once per job enqueued).
_make_created: Callable[..., Job] = maker(
    Job,
    ("id", "task", "queue", "status", "args", "kwargs", "priority", "max_attempts", "key",
     "created_at", "run_at", "timeout", "result_ttl", "headers", "created_now", "_owner"),
)  # fmt: skip


def created_jobs(
    news: Sequence[NewJob],
    now: float,
    *,
    created_now: bool | None = None,
    owner: JobOwner | None = None,
) -> list[Job]:
    """``[created_job(new, now, created_now=…, owner=…) for new in news]``, in one loop at
    about half the cost per job (a batch enqueue returns one job per job it stores)."""
    return _make_created_all(news, now, created_now, owner)


_make_created_all: Callable[..., list[Job]] = lister(
    Job,
    {
        "id": "item.id",
        "task": "item.task",
        "queue": "item.queue",
        "status": "scheduled if item.delay > 0 else queued",
        "args": "list(item.args)",
        "kwargs": "dict(item.kwargs)",
        "priority": "item.priority",
        "max_attempts": "item.max_attempts",
        "key": "item.key",
        "created_at": "now",
        "run_at": "now + (item.delay if item.delay > 0 else 0.0)",  # as ``created_job``
        "timeout": "item.timeout",
        "result_ttl": "item.result_ttl",
        "headers": "dict(item.headers)",
        "created_now": "created_now",
        "_owner": "owner",
    },
    ("now", "created_now", "owner"),
    {"queued": JobStatus.QUEUED, "scheduled": JobStatus.SCHEDULED},
)


def debounce(holder: Job, new: NewJob, now: float) -> Change:
    """A debounced enqueue of ``new`` meeting ``holder``, the unfinished job holding its key.

    A waiting holder takes the arguments of ``new`` and is pushed back to ``new.delay``
    from now (the quiet window starts again); event ``debounced``; the store returns it
    (``created_now`` False). A running holder is not touched beyond giving up its key
    (its ``key`` is cleared): the store then creates ``new``, which holds the key.
    """
    if holder.status in WAITING_STATUSES:
        later = _move(
            holder,
            JobStatus.SCHEDULED,
            args=list(new.args),
            kwargs=dict(new.kwargs),
            run_at=now + max(new.delay, 0.0),
        )
        return Change(later, "debounced")
    if holder.status is JobStatus.RUNNING:
        return Change(replace(holder, key=None), None)
    raise ValueError(f"job {holder.id} is finished: it holds no key")


def start_now(new: NewJob, *, worker: str, now: float, lease_ttl: float) -> Change:
    """A new job created already claimed and started (work run in-process at once)."""
    job = created_job(new if new.delay == 0.0 else replace(new, delay=0.0), now)
    # ``claim`` then ``begin`` in one step (one record built, not three: a plain callable's
    # job is started on the request path).
    started = _move(
        job,
        JobStatus.RUNNING,
        worker=worker,
        lease_expires_at=now + lease_ttl,
        cancel_requested=False,
        attempts=1,
        started_at=now,
    )
    return Change(started, "started")


def promote(job: Job, now: float) -> Change | None:
    """A scheduled job whose time came joins its queue (no event: nothing ran)."""
    if job.status is not JobStatus.SCHEDULED or job.run_at > now:
        return None
    return Change(_move(job, JobStatus.QUEUED), None)


def claim(job: Job, *, worker: str, now: float, lease_ttl: float) -> Change:
    """Hand a due waiting job to ``worker``: it holds the lease but has not started."""
    if job.status not in WAITING_STATUSES or job.run_at > now:
        raise ValueError(f"job {job.id} is not due for a claim ({job.status.value})")
    claimed = _move(
        job,
        JobStatus.RUNNING,
        worker=worker,
        lease_expires_at=now + lease_ttl,
        started_at=None,
        cancel_requested=False,
    )
    return Change(claimed, None)


def begin(job: Job, *, held: str | None, token: str, now: float) -> Change | None:
    """The claimed attempt starts now; ``None`` if the lease is no longer the caller's.

    Beginning twice under one lease changes nothing (a retried write is harmless).
    """
    if not _owns(job, held, token):
        return None
    if job.started_at is not None:
        return Change(job, None)
    return Change(evolve(job, attempts=job.attempts + 1, started_at=now), "started")


def heartbeat(
    job: Job, *, held: str | None, token: str, now: float, lease_ttl: float
) -> Job | None:
    """The lease renewed until ``now + lease_ttl``; ``None`` if it is lost."""
    if not _owns(job, held, token):
        return None
    return evolve(job, lease_expires_at=now + lease_ttl)


def progress(
    job: Job, *, held: str | None, token: str, progress: float, message: str | None
) -> Change | None:
    """A running job's progress; ``None`` if the lease is lost."""
    if not _owns(job, held, token):
        return None
    return Change(evolve(job, progress=progress, progress_message=message), "progress", message)


def finish(
    job: Job, *, held: str | None, token: str, outcome: Outcome, now: float
) -> Change | None:
    """How an attempt ended, if the caller's lease still holds (fencing); else ``None``."""
    if not _owns(job, held, token):
        return None
    status = outcome.status
    # Only a started attempt enters the timeline (a prefetched claim released is not one).
    started = job.started_at is not None
    if status is JobStatus.SUCCEEDED:
        # ``error`` is the last attempt's: a success clears an earlier attempt's error,
        # which the timeline keeps.
        timeline = _ended(job, "succeeded", None, now) if started else job.timeline
        done = _move(
            job,
            status,
            result=outcome.result,
            error=None,
            finished_at=now,
            timeline=timeline,
            **_LEASE_CLEARED,
        )
        return Change(done, "succeeded")
    if status is JobStatus.FAILED or status is JobStatus.CANCELLED:
        timeline = _ended(job, status.value, outcome.error, now) if started else job.timeline
        done = _move(
            job, status, error=outcome.error, finished_at=now, timeline=timeline, **_LEASE_CLEARED
        )
        return Change(done, status.value)
    if status is JobStatus.SCHEDULED:
        at = now + max(outcome.delay, 0.0)
        timeline = _ended(job, "retrying", outcome.error, now) if started else job.timeline
        later = _move(
            job, status, error=outcome.error, run_at=at, timeline=timeline, **_LEASE_CLEARED
        )
        return Change(later, "retrying")
    if status is JobStatus.QUEUED:
        # Released: the attempt is given back, and the job keeps its place in the queue.
        attempts = job.attempts - 1 if started else job.attempts
        timeline = _ended(job, "released", None, now) if started else job.timeline
        back = _move(job, status, attempts=max(attempts, 0), timeline=timeline, **_LEASE_CLEARED)
        return Change(back, "released")
    raise ValueError(f"not an outcome: {status!r}")


def recovery_order(job: Job) -> tuple[float, str]:
    """The order in which expired leases are taken back: earliest expiry first, then id."""
    return (job.lease_expires_at or 0.0, job.id)


def lease_expired(job: Job, now: float) -> bool:
    """Whether ``job`` is held under a lease that ran out by ``now``."""
    return (
        job.status is JobStatus.RUNNING
        and job.lease_expires_at is not None
        and job.lease_expires_at <= now
    )


def recover(job: Job, *, now: float, max_recoveries: int) -> Change:
    """Take back a job whose worker stopped renewing its lease.

    Only a started attempt is charged: a job that was only claimed (prefetched) goes back
    uncharged, keeping its place ahead of newer work. A started one counts a recovery and
    is failed once ``max_recoveries`` workers died running it (so a job that kills its
    worker is failed after exactly that many crashes); otherwise it is queued again.
    A job someone asked to cancel is cancelled instead.
    """
    if job.status is not JobStatus.RUNNING:
        raise ValueError(f"job {job.id} is not running ({job.status.value})")
    worker = job.worker or "?"
    if job.started_at is None:
        if job.cancel_requested:
            return _cancelled_on_recovery(job, now, "before it started")
        back = _move(job, JobStatus.QUEUED, **_LEASE_CLEARED)
        return Change(back, "recovered", f"worker {worker} died before starting it")
    recoveries = job.recoveries + 1
    message = f"the worker {worker} stopped renewing its lease during attempt {job.attempts}"
    lost = JobError.from_message(WORKER_LOST, message)
    job = replace(job, timeline=_ended(job, "lost", lost, now))
    if job.cancel_requested:
        return _cancelled_on_recovery(replace(job, recoveries=recoveries), now, message)
    if job.max_attempts <= 0:
        error = JobError.from_message(WORKER_LOST, f"{message}; it ran in-process only")
        failed = _move(
            job,
            JobStatus.FAILED,
            recoveries=recoveries,
            error=error,
            finished_at=now,
            **_LEASE_CLEARED,
        )
        return Change(failed, "failed", error.message)
    if recoveries >= max_recoveries:
        error = JobError.from_message(
            WORKER_LOST,
            f"{message}; failed: {recoveries} worker(s) died running this job"
            f" (max_recoveries={max_recoveries})",
        )
        failed = _move(
            job,
            JobStatus.FAILED,
            recoveries=recoveries,
            error=error,
            finished_at=now,
            **_LEASE_CLEARED,
        )
        return Change(failed, "failed", error.message)
    error = JobError.from_message(WORKER_LOST, message)
    back = _move(
        job, JobStatus.QUEUED, recoveries=recoveries, error=error, run_at=now, **_LEASE_CLEARED
    )
    return Change(back, "recovered", message)


def _cancelled_on_recovery(job: Job, now: float, why: str) -> Change:
    error = JobError.from_message("afterwork.Cancelled", f"cancelled; its worker died {why}")
    done = _move(job, JobStatus.CANCELLED, error=error, finished_at=now, **_LEASE_CLEARED)
    return Change(done, "cancelled", error.message)


def cancel(job: Job, *, now: float) -> Change | None:
    """Cancel a waiting job at once, or ask the worker of a running one to stop it.

    ``None`` when there is nothing to change (finished, or a cancel already asked for).
    """
    if job.status in TERMINAL_STATUSES:
        return None
    if job.status is JobStatus.RUNNING:
        if job.cancel_requested:
            return None
        return Change(replace(job, cancel_requested=True), "cancel_requested")
    return Change(_move(job, JobStatus.CANCELLED, finished_at=now), "cancelled")


def retry(job: Job, *, now: float, key_free: bool) -> Change | None:
    """Queue a failed or cancelled job again with a fresh budget; ``None`` for any other.

    ``key_free`` says whether the job's key may be taken back (no unfinished job holds it).
    """
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        return None
    again = _move(
        job,
        JobStatus.QUEUED,
        attempts=0,
        recoveries=0,
        key=job.key if key_free else None,
        run_at=now,
        started_at=None,
        finished_at=None,
        result=None,
        progress=None,
        progress_message=None,
        **_LEASE_CLEARED,
    )
    return Change(again, "retried")


def quarantine(job: Job, *, now: float, reason: str) -> Change:
    """Fail a job whose stored record cannot be read, instead of running it."""
    error = job.error if job.error is not None and job.error.type == MALFORMED else None
    error = error or JobError.from_message(MALFORMED, reason)
    failed = replace(job, status=JobStatus.FAILED, error=error, finished_at=now, **_LEASE_CLEARED)
    return Change(failed, "failed", error.message)


def purgeable(job: Job, *, now: float, older_than: float | None) -> bool:
    """Whether a finished job may be deleted: past its ``result_ttl``, or ``older_than``."""
    if job.status not in TERMINAL_STATUSES or job.finished_at is None:
        return False
    if older_than is not None and job.finished_at <= now - older_than:
        return True
    return job.result_ttl is not None and job.finished_at + job.result_ttl <= now


def waiting_reason(
    job: Job,
    *,
    now: float,
    paused: bool = False,
    flow: FlowLimit | None = None,
    running: int = 0,
    rate: RateLimit | None = None,
    starts: list[float] | None = None,
    debounced: bool = False,
) -> str | None:
    """Why a waiting job has not started, from the store's limit state read now.

    ``running``: the jobs running in the job's flow group (:func:`flow_group`); ``starts``:
    the recorded starts of its rate group. ``None`` when nothing holds it back (it waits
    for a free worker, or it is not waiting).
    """
    if job.status not in WAITING_STATUSES:
        return None
    if job.status is JobStatus.SCHEDULED and job.run_at > now:
        if debounced and job.key is not None:
            return (
                f"debounced: runs {job.run_at - now:.1f}s from now, once its key has been"
                " quiet for the window (another enqueue with the key pushes it back)"
            )
        return None
    if paused:
        return f"paused queue: {job.queue!r} is paused (it starts nothing until resumed)"
    group = ""
    if flow is not None and running >= flow.limit:
        if flow.key is not None:
            group = f" for {flow.key}={json.dumps(job.kwargs.get(flow.key))}"
        return f"concurrency limit: {running} of {flow.limit} running across the fleet{group}"
    if rate is not None and starts is not None:
        at = rate_next_start(starts, now=now, rate=rate)
        if at is not None:
            if rate.key is not None:
                group = f" for {rate.key}={json.dumps(job.kwargs.get(rate.key))}"
            return (
                f"rate limit: {rate.limit} starts in the last {rate.per:g}s{group};"
                f" the next may start in {max(at - now, 0.0):.1f}s"
            )
    return None
