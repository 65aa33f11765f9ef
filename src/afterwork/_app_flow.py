"""The facade's flow-control calls: paused queues and bulk retry/cancel (issue 13).

A mixin of :class:`~afterwork.app.Afterwork`, kept apart so the facade module stays small.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from ._bulk import CANCELLABLE, RETRYABLE, JobSelection, select
from .backends.base import Inspector, QueuePause
from .exceptions import ConfigurationError
from .job import Job, JobStatus
from .task import queue_problem

if TYPE_CHECKING:
    from .backends.base import Store
    from .job import JobOwner

__all__ = ("FlowControl",)


class FlowControl:
    """``pause``/``resume``/``paused_queues`` and ``select_jobs``/``retry_jobs``/``cancel_jobs``."""

    if TYPE_CHECKING:
        backend: Store

        async def _ensure_open(self) -> None: ...

        def _inspector(self) -> Inspector: ...

        async def retry(self, job_id: str) -> Job | None: ...

        async def cancel(self, job_id: str) -> Job | None: ...

    async def pause(self, queue: str) -> None:
        """Pause ``queue`` across the fleet: enqueues are accepted, no worker starts its jobs.

        Jobs already running finish. The state is kept in the store, so it survives
        restarts, until :meth:`resume`.
        """
        await self._ensure_open()
        await self._queue_pause().pause_queue(_checked_queue(queue))

    async def resume(self, queue: str) -> None:
        """Let workers start the jobs of ``queue`` again."""
        await self._ensure_open()
        await self._queue_pause().resume_queue(_checked_queue(queue))

    async def paused_queues(self) -> frozenset[str]:
        """The queues paused now (none on a store that cannot pause queues)."""
        await self._ensure_open()
        if not isinstance(self.backend, QueuePause):
            return frozenset()
        return await self.backend.paused_queues()

    def _queue_pause(self) -> QueuePause:  # callers open the store first
        if not isinstance(self.backend, QueuePause):
            raise ConfigurationError(f"{type(self.backend).__name__} cannot pause queues")
        return self.backend

    async def select_jobs(self, selection: JobSelection) -> list[Job]:
        """Every job matching ``selection`` (what a bulk retry or cancel would take)."""
        await self._ensure_open()
        found = await select(self._inspector(), selection, self.backend.now())
        owner = cast("JobOwner", self)  # Afterwork is one
        return [job.bind(owner) for job in found]

    async def retry_jobs(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        error_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Job]:
        """Retry every failed or cancelled job matching the filter; return those retried.

        ``since``/``until``: seconds ago (a job's time is when it finished). Each job goes
        through the same manual retry as :meth:`retry`.
        """
        fields = {"queue": queue, "task": task, "error_type": error_type}
        selection = JobSelection.of(status, RETRYABLE, since=since, until=until, **fields)
        retried = [await self.retry(job.id) for job in await self.select_jobs(selection)]
        return [job for job in retried if job is not None and job.status is JobStatus.QUEUED]

    async def cancel_jobs(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        error_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Job]:
        """Cancel every waiting or running job matching the filter; return those changed.

        A running job is asked to stop (it ends within a heartbeat), as :meth:`cancel`.
        """
        fields = {"queue": queue, "task": task, "error_type": error_type}
        selection = JobSelection.of(status, CANCELLABLE, since=since, until=until, **fields)
        changed: list[Job] = []
        for job in await self.select_jobs(selection):
            if job.cancel_requested:
                continue  # asked already
            after = await self.cancel(job.id)
            if after is not None and (
                after.status is JobStatus.CANCELLED or after.cancel_requested
            ):
                changed.append(after)
        return changed


def _checked_queue(queue: str) -> str:
    problem = queue_problem(queue)
    if problem is not None:
        raise ValueError(f"queue {problem}: {queue!r}")
    return queue
