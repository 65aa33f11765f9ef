"""``aw.join()``: wait until no job is due or running (tests, scripts)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import anyio

from .backends.base import DueCount, Inspector, JobFilter, Store
from .job import JobStatus

__all__ = ("busy", "join")


async def busy(store: Store) -> int:
    """How many jobs are due (queued, or scheduled with their time come) or running."""
    if isinstance(store, DueCount):
        return await store.due_or_running()
    if not isinstance(store, Inspector):
        raise TypeError(f"{type(store).__name__} cannot be inspected, so it cannot be joined")
    count = 0
    for queue in await store.stats():
        count += queue.counts.get(JobStatus.QUEUED, 0) + queue.counts.get(JobStatus.RUNNING, 0)
    if count:
        return count
    now = store.now()
    before: str | None = None
    while True:  # scheduled jobs whose time has come, a page at a time
        page = await store.list_jobs(
            JobFilter(statuses=(JobStatus.SCHEDULED,), before=before, limit=500)
        )
        count += sum(1 for job in page if job.run_at <= now)
        if len(page) < 500:
            return count
        before = page[-1].id


async def join(
    store: Store,
    *,
    timeout: float | None,
    poll_interval: float,
    run_due: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Return once :func:`busy` is 0; ``run_due`` (eager mode) runs due jobs in between.

    Wakes on the store's events, and polls every ``poll_interval`` (events may be lossy).

    Raises:
        TimeoutError: jobs were still due or running after ``timeout`` seconds.
    """
    left = 0
    try:
        with anyio.fail_after(timeout):
            async with contextlib.aclosing(store.events()) as events:
                iterator = aiter(events)
                exhausted = False
                while True:
                    if run_due is not None:
                        await run_due()
                    left = await busy(store)
                    if not left:
                        return
                    with anyio.move_on_after(poll_interval):
                        if exhausted:
                            await anyio.sleep(poll_interval)
                        try:
                            await anext(iterator)
                        except StopAsyncIteration:
                            exhausted = True
    except TimeoutError:
        raise TimeoutError(
            f"{left} job(s) still due or running after {timeout:g}s: is a worker running "
            "(aw.lifespan, aw.worker(), `afterwork worker`)? In tests, Afterwork(..., "
            "eager=True) runs registered tasks inline"
        ) from None
