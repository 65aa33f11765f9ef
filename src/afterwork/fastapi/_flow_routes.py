"""Flow-control routes of ``aw.router()``: bulk retry/cancel by filter, pause/resume queues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, HTTPException, Path

from .._bulk import CANCELLABLE, RETRYABLE, JobSelection
from ..job import JobStatus
from ..task import MAX_QUEUE, queue_problem
from ._schemas import BulkBody, BulkOut, QueuePauseOut

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("add_flow_routes",)

QueueName = Annotated[str, Path(min_length=1, max_length=MAX_QUEUE)]


def add_flow_routes(router: APIRouter, aw: Afterwork) -> None:
    """``POST /bulk/retry``, ``POST /bulk/cancel``, ``POST /queues/{name}/pause|resume``."""

    @router.post("/bulk/retry", response_model=BulkOut, summary="Retry the jobs a filter matches")
    async def retry_jobs(body: BulkBody) -> BulkOut:
        async def retry(job_id: str) -> bool:
            after = await aw.retry(job_id)
            return after is not None and after.status is JobStatus.QUEUED

        return await _bulk(aw, body, RETRYABLE, retry)

    @router.post("/bulk/cancel", response_model=BulkOut, summary="Cancel the jobs a filter matches")
    async def cancel_jobs(body: BulkBody) -> BulkOut:
        async def cancel(job_id: str) -> bool:
            after = await aw.cancel(job_id)
            return after is not None and (
                after.status is JobStatus.CANCELLED or after.cancel_requested
            )

        return await _bulk(aw, body, CANCELLABLE, cancel)

    @router.post(
        "/queues/{name:path}/pause",
        response_model=QueuePauseOut,
        summary="Pause a queue across the fleet (running jobs finish, nothing new starts)",
    )
    async def pause_queue(name: QueueName) -> QueuePauseOut:
        await aw.pause(_queue_or_422(name))
        return QueuePauseOut(queue=name, paused=True)

    @router.post(
        "/queues/{name:path}/resume", response_model=QueuePauseOut, summary="Resume a queue"
    )
    async def resume_queue(name: QueueName) -> QueuePauseOut:
        await aw.resume(_queue_or_422(name))
        return QueuePauseOut(queue=name, paused=False)


async def _bulk(
    aw: Afterwork,
    body: BulkBody,
    applicable: tuple[JobStatus, ...],
    act: Callable[[str], Awaitable[bool]],
) -> BulkOut:
    """Select the jobs, then (unless a dry run) act on each: one call, counts back."""
    fields = body.model_dump(exclude={"status", "dry_run"})
    try:
        selection = JobSelection.of(body.status, applicable, **fields)
    except ValueError as exc:
        detail = [{"loc": ["body", "status"], "msg": str(exc), "type": "value_error"}]
        raise HTTPException(422, detail) from None
    jobs = await aw.select_jobs(selection)
    changed = 0
    if not body.dry_run:
        for job in jobs:
            if not job.cancel_requested and await act(job.id):
                changed += 1
    return BulkOut(matched=len(jobs), changed=changed, dry_run=body.dry_run)


def _queue_or_422(name: str) -> str:
    problem = queue_problem(name)
    if problem is not None:
        detail = [
            {"loc": ["path", "name"], "msg": f"a queue name {problem}", "type": "value_error"}
        ]
        raise HTTPException(422, detail)
    return name
