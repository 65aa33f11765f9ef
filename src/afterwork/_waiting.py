"""Why a waiting job waits: computed on read from the store's limit state.

Nothing is written on a claim for this: ``aw.get_job`` reads the queue's pause state, the
running jobs of the job's flow group and the recorded starts of its rate group, and
:func:`afterwork._lifecycle.waiting_reason` decides what to say.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import _lifecycle as life
from .backends.base import JobFilter, QueuePause, RateLimits
from .job import WAITING_STATUSES, Job, JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .task import Task

__all__ = ("explain",)

#: Running jobs read at most to count a flow group (a larger fleet-wide count is capped).
_RUNNING_PAGE = 1000


async def explain(backend: Any, tasks: Mapping[str, Task[Any, Any]], job: Job) -> Job:
    """``job`` with its :attr:`~afterwork.job.Job.waiting_reason` (for a waiting job)."""
    if job.status not in WAITING_STATUSES:
        return job
    task = tasks.get(job.task)
    now = backend.now()
    paused = isinstance(backend, QueuePause) and job.queue in await backend.paused_queues()
    flow = rate = None
    running = 0
    starts: list[float] | None = None
    if task is not None and not paused and job.run_at <= now:
        if task.opts.concurrency is not None:
            flow = life.FlowLimit(task.opts.concurrency, task.opts.concurrency_key)
            group = life.flow_group(job.task, job.kwargs, flow)
            held = await backend.list_jobs(
                JobFilter(statuses=(JobStatus.RUNNING,), task=job.task, limit=_RUNNING_PAGE)
            )
            running = sum(life.flow_group(j.task, j.kwargs, flow) == group for j in held)
        rate = task.opts.rate_limit
        if rate is not None and isinstance(backend, RateLimits):
            starts = await backend.rate_starts(life.rate_group(job.task, job.kwargs, rate), rate)
    reason = life.waiting_reason(
        job,
        now=now,
        paused=paused,
        flow=flow,
        running=running,
        rate=rate,
        starts=starts,
        debounced=task is not None and task.opts.debounce is not None,
    )
    return dataclasses.replace(job, waiting_reason=reason)
