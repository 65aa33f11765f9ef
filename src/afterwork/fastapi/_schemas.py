"""The REST API's request and response models (they appear in the app's OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..backends.base import QueueStats
from ..job import Job, JobStatus
from ..task import MAX_DELAY, MAX_KEY, MAX_QUEUE, PRIORITY_MAX, PRIORITY_MIN, Task

__all__ = (
    "BulkBody",
    "BulkOut",
    "EnqueueBody",
    "EnqueueOptionsBody",
    "InfoOut",
    "JobErrorOut",
    "JobOut",
    "JobPage",
    "QueueOut",
    "QueuePauseOut",
    "TaskOut",
)


class JobErrorOut(BaseModel):
    """Why an attempt failed."""

    type: str
    message: str
    traceback: str = ""


class JobAttemptOut(BaseModel):
    """One finished attempt of a job (its timeline, oldest first)."""

    number: int
    started_at: float | None
    ended_at: float
    worker: str | None
    outcome: str
    error: JobErrorOut | None


# The pydantic mypy plugin's synthesized ``__init__(**kwargs)`` clashes with the field name.
class JobOut(BaseModel):  # type: ignore[no-redef]
    """A job as the store last saw it. Timestamps are seconds since the epoch."""

    id: str
    task: str
    queue: str
    status: JobStatus
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    recoveries: int
    key: str | None
    created_at: float
    run_at: float
    started_at: float | None
    finished_at: float | None
    result: Any
    error: JobErrorOut | None
    progress: float | None
    progress_message: str | None
    timeout: float | None
    result_ttl: float | None
    worker: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    timeline: list[JobAttemptOut] = []
    waiting_reason: str | None = None
    """Why a waiting job has not started (paused queue, concurrency or rate limit, debounce)."""

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls.model_validate(job.to_dict())


class JobPage(BaseModel):
    """One page of jobs, newest first. Pass ``next_cursor`` as ``before`` for the next page."""

    jobs: list[JobOut]
    next_cursor: str | None = None


class BulkBody(BaseModel):
    """Which jobs a bulk retry or cancel takes (every field optional)."""

    model_config = ConfigDict(extra="forbid")

    status: list[JobStatus] | None = None
    queue: str | None = Field(None, max_length=200)
    task: str | None = Field(None, max_length=500)
    error_type: str | None = Field(None, max_length=500)
    since: float | None = Field(
        None, ge=0, allow_inf_nan=False, strict=True, description="seconds ago"
    )
    until: float | None = Field(
        None, ge=0, allow_inf_nan=False, strict=True, description="seconds ago"
    )
    dry_run: bool = Field(False, strict=True, description="count the jobs, change nothing")


class BulkOut(BaseModel):
    """How many jobs matched, and how many the action changed."""

    matched: int
    changed: int
    dry_run: bool


class QueuePauseOut(BaseModel):
    """A queue's pause state after a pause or resume."""

    queue: str
    paused: bool


class QueueOut(BaseModel):
    """A queue's job counts per status, and how long its oldest due job has waited."""

    queue: str
    counts: dict[JobStatus, int]
    total: int
    oldest_waiting_at: float | None = None
    oldest_waiting_age: float | None = Field(
        default=None, description="Seconds the oldest due job has waited, by the store's clock."
    )

    paused: bool = Field(default=False, description="No worker starts this queue's jobs.")

    @classmethod
    def of(cls, stats: QueueStats, now: float, *, paused: bool = False) -> QueueOut:
        oldest = stats.oldest_waiting_at
        return cls(
            paused=paused,
            queue=stats.queue,
            counts={status: stats.counts.get(status, 0) for status in JobStatus},
            total=sum(stats.counts.values()),
            oldest_waiting_at=oldest,
            oldest_waiting_age=None if oldest is None else max(now - oldest, 0.0),
        )


class TaskOut(BaseModel):
    """A registered task: its policy and the JSON schema of its arguments."""

    name: str
    queue: str
    priority: int
    retries: int
    timeout: float | None
    concurrency: int | None = Field(description="Most running jobs across the fleet.")
    concurrency_key: str | None = None
    local_concurrency: int | None = Field(None, description="Most running jobs per process.")
    rate_limit: dict[str, Any] | None = Field(
        None, description="Most starts per window across the fleet: limit, per, key."
    )
    debounce: float | None = Field(None, description="Quiet seconds before a keyed burst runs.")
    result_ttl: float | None
    arguments: dict[str, Any] = Field(description="JSON schema of the task's arguments.")

    @classmethod
    def of(cls, task: Task[Any, Any]) -> TaskOut:
        opts = task.opts
        return cls(
            name=task.name,
            queue=opts.queue,
            priority=opts.priority,
            retries=opts.retries,
            timeout=opts.timeout,
            concurrency=opts.concurrency,
            concurrency_key=opts.concurrency_key,
            local_concurrency=opts.local_concurrency,
            rate_limit=None
            if opts.rate_limit is None
            else {
                "limit": opts.rate_limit.limit,
                "per": opts.rate_limit.per,
                "key": opts.rate_limit.key,
            },
            debounce=opts.debounce,
            result_ttl=opts.result_ttl,
            arguments=task.codec.json_schema(),
        )


class EnqueueOptionsBody(BaseModel):
    """Options of one enqueue, as ``task.options(...)`` takes them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    delay: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description="Seconds before the job is due (at most ten years).",
    )
    key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY)
    priority: int | None = Field(
        default=None, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="Higher runs first."
    )
    queue: str | None = Field(default=None, min_length=1, max_length=MAX_QUEUE)


class EnqueueBody(BaseModel):
    """``POST /tasks/{name}/enqueue``: the arguments, validated like ``task.enqueue``."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    options: EnqueueOptionsBody = Field(default_factory=EnqueueOptionsBody)


class InfoOut(BaseModel):
    """What the dashboard needs to know about the API it talks to."""

    version: str
    csrf_header: str
    schedules: bool
    services: bool
    event_resume: bool
