"""``aw.watch(job_id)``: one job's state, then each change, until it is finished."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from .backends.base import TRUNCATED, EventHistory, EventStream, Store
from .exceptions import JobNotFound
from .job import TERMINAL_STATUSES, Job, JobEvent

__all__ = ("SNAPSHOT", "watch")

#: The ``kind`` of the event that gives the job as it is (first, and after a gap).
SNAPSHOT = "snapshot"


async def watch(
    store: Store,
    job_id: str,
    get_job: Callable[[str], Awaitable[Job | None]],
    *,
    since: str | None = None,
) -> AsyncGenerator[JobEvent, None]:
    """The job's current state (a ``snapshot`` event), then each of its events, ending
    after the first event with a final status.

    With ``since`` (the ``id`` of the last event a reader saw), the events after it come
    first, from the store's history, instead of a snapshot. Whenever events may have been
    missed (history trimmed, a reader too slow), a fresh snapshot follows: nothing is
    skipped silently.

    Raises:
        JobNotFound: there is no such job (when a snapshot is due).
    """
    resume = since is not None and isinstance(store, EventHistory)
    # Subscribe before reading the job, so no change falls between the two.
    stream: EventStream = (
        store.events(since=since) if resume and isinstance(store, EventHistory) else store.events()
    )
    async with contextlib.aclosing(stream):
        if not resume:
            snapshot = await _snapshot(store, job_id, get_job)
            yield snapshot
            if snapshot.status in TERMINAL_STATUSES:
                return
        async for event in stream:
            if event.kind == TRUNCATED:
                event = await _snapshot(store, job_id, get_job)
            elif event.job_id != job_id:
                continue
            yield event
            if event.status in TERMINAL_STATUSES:
                return


async def _snapshot(
    store: Store, job_id: str, get_job: Callable[[str], Awaitable[Job | None]]
) -> JobEvent:
    job = await get_job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return JobEvent.of(SNAPSHOT, job, store.now())
