"""Bulk operator actions: select jobs by a filter, then retry or cancel each one.

Each selected job still moves through :mod:`afterwork._lifecycle` (the store's ``retry`` /
``cancel``), one by one: a job that changed in between (finished, retried by someone
else) is left as the model decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .backends.base import Inspector, JobFilter
from .job import Job, JobStatus

__all__ = ("CANCELLABLE", "RETRYABLE", "JobSelection", "select")

#: The statuses a manual retry applies to, and those a cancel applies to.
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)
CANCELLABLE = (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING)
_PAGE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSelection:
    """Which jobs a bulk action takes. Times are seconds before the store's now.

    A job's time is when it finished, or when it was created if it has not finished.
    """

    statuses: tuple[JobStatus, ...] = ()
    queue: str | None = None
    task: str | None = None
    error_type: str | None = None
    since: float | None = None
    """Only jobs whose time is at most this many seconds ago."""
    until: float | None = None
    """Only jobs whose time is at least this many seconds ago."""

    def __post_init__(self) -> None:
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative number of seconds")

    @classmethod
    def of(
        cls,
        status: JobStatus | str | Iterable[JobStatus | str] | None,
        applicable: tuple[JobStatus, ...],
        **fields: object,
    ) -> JobSelection:
        """A selection for an action that applies to ``applicable`` statuses only."""
        if status is None:
            statuses = applicable
        elif isinstance(status, JobStatus | str):
            statuses = (JobStatus(status),)
        else:
            statuses = tuple(JobStatus(s) for s in status)
        wrong = [s.value for s in statuses if s not in applicable]
        if wrong:
            names = ", ".join(s.value for s in applicable)
            raise ValueError(f"this action applies to {names} jobs, not {', '.join(wrong)}")
        return cls(statuses=statuses, **fields)  # type: ignore[arg-type]

    def matches(self, job: Job, now: float) -> bool:
        if self.error_type is not None and (job.error is None or job.error.type != self.error_type):
            return False
        at = job.finished_at if job.finished_at is not None else job.created_at
        if self.since is not None and at < now - self.since:
            return False
        return not (self.until is not None and at > now - self.until)


async def select(inspector: Inspector, selection: JobSelection, now: float) -> list[Job]:
    """Every job matching ``selection``, newest first (paged through ``list_jobs``)."""
    chosen: list[Job] = []
    before: str | None = None
    while True:
        page = await inspector.list_jobs(
            JobFilter(
                statuses=selection.statuses,
                queue=selection.queue,
                task=selection.task,
                before=before,
                limit=_PAGE,
            )
        )
        chosen += [job for job in page if selection.matches(job, now)]
        if len(page) < _PAGE:
            return chosen
        before = page[-1].id
