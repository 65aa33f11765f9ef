"""The job model: states, their transitions, and the records the backends store."""

from __future__ import annotations

import os
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from ._records import copier
from .exceptions import EnqueueError, InvalidTransition

__all__ = (
    "ACTIVE_STATUSES",
    "MAX_HEADERS",
    "MAX_HEADERS_BYTES",
    "MAX_TIMELINE",
    "SCHEDULE_HEADER",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "WAITING_STATUSES",
    "Job",
    "JobAttempt",
    "JobError",
    "JobEvent",
    "JobOwner",
    "JobStatus",
    "check_headers",
    "check_transition",
    "new_job_id",
)


class JobOwner(Protocol):
    """What a :class:`Job` needs to refresh itself (an :class:`~afterwork.Afterwork`).

    The model names this protocol, never the facade, so it imports nothing above itself.
    """

    async def get_job(self, job_id: str) -> Job | None: ...

    async def wait_for_job(self, job_id: str, *, timeout: float | None = None) -> Job: ...


class JobStatus(StrEnum):
    """Where a job is in its life.

    ``scheduled → queued → running → succeeded | failed | cancelled``; a failed attempt with
    retries left goes back to ``scheduled``.
    """

    SCHEDULED = "scheduled"
    """Waiting for its ``run_at`` time (a delayed job, or a retry waiting out its backoff)."""
    QUEUED = "queued"
    """Ready to run as soon as a worker is free."""
    RUNNING = "running"
    """Claimed by a worker that holds its lease."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: A job in one of these states waits for a worker.
WAITING_STATUSES = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED})
#: Unfinished jobs: ``key=`` dedupes among these.
ACTIVE_STATUSES = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING})
#: Final states. ``failed`` and ``cancelled`` jobs can still be retried by hand.
TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

#: Every allowed state change, in one place. Backends check against it in their tests.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # A due scheduled job may be claimed straight away: the store promotes and claims it in
    # one atomic step, so "queued" is never observed in between.
    JobStatus.SCHEDULED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED}),
    # A debounced enqueue pushes a queued job back (afterwork._lifecycle.debounce).
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.SCHEDULED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.SCHEDULED,  # a failed attempt with retries left
            JobStatus.QUEUED,  # released on graceful stop, or recovered from an expired lease
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),  # retried by hand
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),  # retried by hand
}


def check_transition(old: JobStatus, new: JobStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``old → new`` is allowed."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"a job cannot go from {old.value!r} to {new.value!r}")


_last_id = 0
_id_lock = threading.Lock()
# Random bits for ids, read from the OS in blocks (one ``urandom`` call per 409 ids, not
# one per id: a batch enqueue makes thousands); emptied in a forked child, so that two
# processes never draw the same bits.
_RANDOM_BLOCK = 4_096
_random = b""
_random_at = 0


_RANDOM_BITS = ~((0xF << 76) | (0x3 << 62))
_VERSION_BITS = (0x7 << 76) | (0x2 << 62)


def _forget_random() -> None:
    global _random, _random_at
    _random, _random_at = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_random)


def new_job_id() -> str:
    """A 32-hex-digit id that sorts by creation time (UUIDv7 layout: 48 bits of ms, then random).

    Ids made by one process are strictly increasing, even within one millisecond (the
    random part counts up, as RFC 9562's monotonic method does), so jobs enqueued in the
    same millisecond still run in the order they were enqueued.
    """
    global _last_id, _random, _random_at
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        at = _random_at
        if at + 10 > len(_random):
            _random, at = os.urandom(_RANDOM_BLOCK), 0
        _random_at = at + 10
        rand = int.from_bytes(_random[at : at + 10], "big") >> 2  # leave room to count up
        # The version (7) and variant bits make the id a valid UUIDv7 in hex.
        value = (ms << 80) | (rand & _RANDOM_BITS) | _VERSION_BITS
        if value <= _last_id:
            value = _last_id + 1
            if (value >> 62) & 0x3 != 0x2:  # the counter ran into the variant bits
                value = (value & ~(0x3 << 62)) | (0x2 << 62)
        _last_id = value
    return f"{value:032x}"


#: The header the scheduler stamps on a cron tick's job: the schedule's name (so an
#: attempt's middleware knows it runs a tick; :mod:`afterwork.tracing` links it instead of
#: making it a child). Header names starting ``afterwork-`` are afterwork's own.
SCHEDULE_HEADER = "afterwork-schedule"

#: At most this many entries in a job's :attr:`~Job.headers`.
MAX_HEADERS = 64
#: At most this many bytes (UTF-8) in a job's :attr:`~Job.headers`, keys and values summed.
MAX_HEADERS_BYTES = 8_192


def check_headers(headers: object, *, task: str | None = None) -> None:
    """Refuse headers a store would not keep: not a dict of non-empty ``str`` keys to
    ``str`` values, more than :data:`MAX_HEADERS` entries, or more than
    :data:`MAX_HEADERS_BYTES` bytes in all.

    Raises:
        EnqueueError: naming what is wrong (``field`` ``"headers"``); nothing is stored.
    """
    if not isinstance(headers, dict):
        raise EnqueueError(
            f"job headers must be a dict of str to str, not {type(headers).__name__}",
            task=task,
            field="headers",
        )
    if len(headers) > MAX_HEADERS:
        raise EnqueueError(
            f"job headers hold {len(headers)} entries; at most {MAX_HEADERS} are kept",
            task=task,
            field="headers",
        )
    size = 0
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise EnqueueError(
                f"job header names must be non-empty strings, not {name!r}",
                task=task,
                field="headers",
            )
        if not isinstance(value, str):
            raise EnqueueError(
                f"job header {name!r} must be a string, not {type(value).__name__}",
                task=task,
                field="headers",
            )
        try:
            size += len(name.encode("utf-8")) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise EnqueueError(
                f"job header {name!r} is not valid Unicode (a lone surrogate)",
                task=task,
                field="headers",
            ) from None
    if size > MAX_HEADERS_BYTES:
        raise EnqueueError(
            f"job headers take {size} bytes; at most {MAX_HEADERS_BYTES} are kept",
            task=task,
            field="headers",
        )


MAX_ERROR_MESSAGE = 4_096
MAX_TRACEBACK = 64 * 1024


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    # Keep both ends: the start says what failed, the end says where.
    half = limit // 2
    return f"{text[:half]}\n… [{len(text) - limit} characters cut] …\n{text[-half:]}"


@dataclass(frozen=True, slots=True)
class JobError:
    """Why an attempt failed: the exception's type, its message and its traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        try:
            message = str(exc)
        except Exception:  # an exception whose __str__ raises must not hide the failure
            message = f"<unprintable {kind.__name__}>"
        formatted = "".join(_traceback.format_exception(exc))
        return cls(
            type=name,
            message=_truncate(message, MAX_ERROR_MESSAGE),
            traceback=_truncate(formatted, MAX_TRACEBACK),
        )

    @classmethod
    def from_message(cls, type: str, message: str) -> JobError:
        return cls(type=type, message=_truncate(message, MAX_ERROR_MESSAGE))

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobError:
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
        )


#: How many attempts a job's :attr:`Job.timeline` keeps; older ones are dropped.
MAX_TIMELINE = 20


@dataclass(frozen=True, slots=True)
class JobAttempt:
    """One finished attempt of a job, as kept in its :attr:`Job.timeline`.

    Attributes:
        number: the attempt's number (``Job.attempts`` when it ran; 1 for the first).
        started_at: when it started (seconds since the epoch, the store's clock).
        ended_at: when it ended.
        worker: the worker that ran it.
        outcome: ``succeeded``, ``failed``, ``retrying`` (failed, another attempt follows),
            ``cancelled``, ``released`` (given back on a graceful stop, not charged) or
            ``lost`` (its worker died; the lease expired).
        error: what went wrong (type, message, traceback), if anything did.

    .. versionadded:: 0.2
    """

    number: int
    started_at: float | None
    ended_at: float
    worker: str | None
    outcome: str
    error: JobError | None = None

    @property
    def duration(self) -> float | None:
        """Seconds the attempt ran (``None`` if its start is unknown)."""
        return None if self.started_at is None else max(self.ended_at - self.started_at, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "worker": self.worker,
            "outcome": self.outcome,
            "error": None if self.error is None else self.error.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobAttempt:
        error = data.get("error")
        started = data.get("started_at")
        return cls(
            number=int(data.get("number", 0)),
            started_at=None if started is None else float(started),
            ended_at=float(data.get("ended_at", 0.0)),
            worker=data.get("worker"),
            outcome=str(data.get("outcome", "")),
            error=None if not isinstance(error, Mapping) else JobError.from_dict(error),
        )


def timeline_to_json(timeline: tuple[JobAttempt, ...]) -> list[dict[str, Any]]:
    """A timeline as stored (a JSON array)."""
    return [attempt.to_dict() for attempt in timeline]


def timeline_from_json(data: Any) -> tuple[JobAttempt, ...]:
    """A stored timeline back; raises ``ValueError`` if it is not a JSON array of objects."""
    if not isinstance(data, list) or not all(isinstance(item, Mapping) for item in data):
        raise ValueError("the timeline must be a JSON array of objects")
    return tuple(JobAttempt.from_dict(item) for item in data)


def timestamp(value: float | None) -> datetime | None:
    """Seconds since the epoch to an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job as the store last saw it.

    A ``Job`` is a snapshot: :meth:`refresh` and :meth:`wait` fetch a newer one.
    Timestamps are seconds since the epoch, by the store's clock; the ``*_dt`` helpers
    (:attr:`created_at_dt`, :attr:`run_at_dt`, :attr:`started_at_dt`,
    :attr:`finished_at_dt`) turn them into aware UTC datetimes.

    Example:
        ```python
        job = await send_email.enqueue("ada@example.com", "Welcome")
        job = await job.wait(timeout=10)
        assert job.status is JobStatus.SUCCEEDED
        result = job.result_or_raise()  # JobFailed if it failed or was cancelled
        ```
    """

    id: str
    task: str
    queue: str = "default"
    status: JobStatus = JobStatus.QUEUED
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    attempts: int = 0
    """How many times the job was started (a release on graceful stop does not count)."""
    max_attempts: int = 1
    """``retries + 1``: how many attempts may fail before the job is ``failed``."""
    recoveries: int = 0
    """How many times the job was taken back from a worker that died holding it."""
    key: str | None = None
    created_at: float = 0.0
    run_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: JobError | None = None
    progress: float | None = None
    progress_message: str | None = None
    timeout: float | None = None
    result_ttl: float | None = None
    worker: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    created_now: bool | None = field(default=None, compare=False, repr=False)
    """What the enqueue that returned this job did: ``True`` it created the job now,
    ``False`` it returned an existing one (a ``key=`` held by an unfinished job), so a
    route can answer 201 or 200. ``None`` on a job not returned by an enqueue."""
    waiting_reason: str | None = field(default=None, compare=False)
    """Why a waiting job has not started (a paused queue, a concurrency or rate limit, a
    debounce window), as :meth:`Afterwork.get_job` read it from the store's limit state;
    ``None`` when nothing holds it back, and on jobs not read by ``get_job``."""
    timeline: tuple[JobAttempt, ...] = ()
    """The job's last attempts, oldest first (at most :data:`MAX_TIMELINE`): when each
    started and ended, on which worker, how it ended and its error. ``error`` is the last
    one's (``None`` once an attempt succeeded). The attempt running now is not in it yet."""
    headers: dict[str, str] = field(default_factory=dict)
    """Small string metadata carried with the job from its enqueue to every attempt: what
    an enqueue middleware put in :attr:`JobCall.headers <afterwork.JobCall.headers>` (the
    W3C ``traceparent`` of :class:`afterwork.tracing.Tracing`, say). Stored by every store,
    kept as is by retries; see :func:`check_headers` for the limits.

    .. versionadded:: 0.2"""
    _owner: JobOwner | None = field(default=None, compare=False, repr=False)

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def failures(self) -> int:
        """Attempts that ended in an error (crashes of the worker are counted as recoveries)."""
        return max(self.attempts - self.recoveries, 0)

    @property
    def created(self) -> datetime:
        """When the job was created (the same as :attr:`created_at_dt`)."""
        return datetime.fromtimestamp(self.created_at, UTC)

    @property
    def scheduled_for(self) -> datetime:
        """When the job is due (the same as :attr:`run_at_dt`)."""
        return datetime.fromtimestamp(self.run_at, UTC)

    @property
    def created_at_dt(self) -> datetime:
        """``created_at`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.created_at, UTC)

    @property
    def run_at_dt(self) -> datetime:
        """``run_at`` (when the job is due) as an aware UTC datetime."""
        return datetime.fromtimestamp(self.run_at, UTC)

    @property
    def started_at_dt(self) -> datetime | None:
        """``started_at`` as an aware UTC datetime (``None`` if it never started)."""
        return timestamp(self.started_at)

    @property
    def finished_at_dt(self) -> datetime | None:
        """``finished_at`` as an aware UTC datetime (``None`` while unfinished)."""
        return timestamp(self.finished_at)

    def result_or_raise(self) -> Any:
        """The job's result if it succeeded; otherwise raise.

        Raises:
            JobFailed: the job failed or was cancelled; ``exc.job`` is this job and
                ``exc.error`` its :class:`JobError` (type, message, traceback).
            RuntimeError: the job has not finished yet (``await job.wait()`` first).

        Example:
            ```python
            job = await transcode.enqueue(42)
            report = (await job.wait(timeout=60)).result_or_raise()
            ```
        """
        from .exceptions import JobFailed

        if self.status is JobStatus.SUCCEEDED:
            return self.result
        if self.status is JobStatus.FAILED or self.status is JobStatus.CANCELLED:
            error = self.error
            why = f": {error.type}: {error.message}" if error is not None else ""
            raise JobFailed(
                f"job {self.id} ({self.task}) {self.status.value}{why}",
                job_id=self.id,
                job=self,
                error=error,
            )
        raise RuntimeError(
            f"job {self.id} ({self.task}) is {self.status.value}, not finished: it has no "
            "result yet; await job.wait() (or job.refresh()) and call this on what it returns"
        )

    def bind(self, owner: JobOwner) -> Job:
        """This job, attached to ``owner`` so that :meth:`wait` and :meth:`refresh` work."""
        return self if self._owner is owner else _told(self, self.created_now, owner)

    def told(self, created_now: bool | None, owner: JobOwner) -> Job:
        """This job as an enqueue returns it: ``created_now`` set, attached to ``owner``.

        The same as ``replace(self, created_now=..., _owner=owner)``, at a third of its
        cost (a batch enqueue returns thousands of jobs).
        """
        return _told(self, created_now, owner)

    def _require_owner(self) -> JobOwner:
        if self._owner is None:
            raise RuntimeError(
                "this Job is not attached to an Afterwork instance; use aw.get_job(job.id)"
            )
        return self._owner

    async def refresh(self) -> Job:
        """The job as the store sees it now."""
        owner = self._require_owner()
        job = await owner.get_job(self.id)
        if job is None:
            from .exceptions import JobNotFound

            raise JobNotFound(self.id)
        return job

    async def wait(self, timeout: float | None = None) -> Job:
        """Wait until the job is finished and return it refreshed.

        Raises:
            TimeoutError: the job did not finish within ``timeout`` seconds.
        """
        return await self._require_owner().wait_for_job(self.id, timeout=timeout)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the job (the REST API's and the CLI's representation)."""
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "status": self.status.value,
            "args": self.args,
            "kwargs": self.kwargs,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "recoveries": self.recoveries,
            "key": self.key,
            "created_at": self.created_at,
            "run_at": self.run_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": None if self.error is None else self.error.to_dict(),
            "progress": self.progress,
            "progress_message": self.progress_message,
            "timeout": self.timeout,
            "result_ttl": self.result_ttl,
            "worker": self.worker,
            "lease_expires_at": self.lease_expires_at,
            "cancel_requested": self.cancel_requested,
            "timeline": timeline_to_json(self.timeline),
            "waiting_reason": self.waiting_reason,
        }


_told: Callable[[Job, bool | None, JobOwner], Job] = copier(Job, ("created_now", "_owner"))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    """A change in a job's life, as streamed to subscribers and by SSE.

    ``kind`` says what happened: ``enqueued``, ``started``, ``progress``, ``succeeded``,
    ``retrying``, ``failed``, ``cancelled``, ``cancel_requested``, ``released``,
    ``recovered``, ``retried`` (by hand), ``debounced`` (a debounced enqueue pushed it back
    with new arguments) or ``purged``.
    """

    kind: str
    job_id: str
    task: str
    queue: str
    status: JobStatus
    attempts: int = 0
    at: float = 0.0
    progress: float | None = None
    message: str | None = None
    id: str | None = None
    """The event's position in the store's stream, where the backend keeps one (for resume)."""

    @classmethod
    def of(cls, kind: str, job: Job, at: float, *, message: str | None = None) -> JobEvent:
        return cls(
            kind=kind,
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            status=job.status,
            attempts=job.attempts,
            at=at,
            progress=job.progress,
            message=message,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "job_id": self.job_id,
            "task": self.task,
            "queue": self.queue,
            "status": self.status.value,
            "attempts": self.attempts,
            "at": self.at,
            "progress": self.progress,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobEvent:
        return cls(
            kind=str(data["kind"]),
            job_id=str(data["job_id"]),
            task=str(data["task"]),
            queue=str(data["queue"]),
            status=JobStatus(data["status"]),
            attempts=int(data.get("attempts", 0)),
            at=float(data.get("at", 0.0)),
            progress=data.get("progress"),
            message=data.get("message"),
            id=data.get("id"),
        )
