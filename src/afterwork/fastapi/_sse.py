"""Server-Sent Events: the job event stream behind ``GET /events``.

The stream ends cleanly when the client goes away (Starlette cancels the generator, which
unsubscribes), when the :class:`~afterwork.Afterwork` instance closes (its store ends every
subscription: what the lifespan does at shutdown), or after ``lifetime`` seconds: then the
browser's ``EventSource`` reconnects by itself. That last bound matters because uvicorn waits
for open responses to finish *before* it runs the lifespan's shutdown.

Resuming: every event goes out with its store id (``id:``); a client that comes back with
``Last-Event-ID`` (or ``?since=``) gets what it missed first, exactly once, from the store's
history (:class:`~afterwork.backends.base.EventHistory`). If the history no longer reaches
back that far, a ``truncated`` event says so and the client should reload.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from ..backends.base import TRUNCATED, EventHistory, EventStream
from ..job import JobEvent

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("SNAPSHOT", "event_stream", "format_event")

logger: logging.Logger = logging.getLogger(__name__)

#: What a browser waits before it reconnects a dropped stream, in milliseconds.
RETRY_MS = 3_000

#: The ``kind`` of the event that opens a per-job stream: the job as it is now.
SNAPSHOT = "snapshot"


def format_event(data: dict[str, Any], *, event: str | None = None, id: str | None = None) -> str:
    """One SSE message. JSON never contains a raw newline, so ``data`` fits on one line."""
    lines = []
    if id is not None:
        lines.append(f"id: {_one_line(id)}")
    if event is not None:
        lines.append(f"event: {_one_line(event)}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines) + "\n\n"


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


async def event_stream(
    aw: Afterwork,
    *,
    job_id: str | None,
    last_event_id: str | None,
    heartbeat: float,
    lifetime: float,
) -> AsyncIterator[str]:
    """SSE text for job events: a ``ready`` event, then job events and ``: ping`` comments.

    A per-job stream (``job_id``) sends the job's current state first (a ``snapshot`` event),
    unless it resumes, then that job's changes.

    Args:
        aw: whose store to follow.
        job_id: only this job's events (``None``: every job's).
        last_event_id: the id of the last event the client saw (``Last-Event-ID``, or
            ``?since=``): resume after it.
        heartbeat: seconds of silence after which a comment is sent, so proxies keep the
            connection open and a vanished client is noticed.
        lifetime: seconds after which the stream ends (the client reconnects).
    """
    await aw.open()
    backend = aw.backend
    since = last_event_id or None
    resumed = since is not None and isinstance(backend, EventHistory)
    # Subscribe before anything is read, so nothing falls between a snapshot and the stream.
    stream: EventStream = (
        backend.events(since=since)
        if resumed and isinstance(backend, EventHistory)
        else backend.events()
    )
    try:
        # Subscribed: a client may now act and be sure to see what follows.
        yield f"retry: {RETRY_MS}\n" + format_event({"resumed": resumed}, event="ready")
        if job_id is not None and not resumed:
            yield await _snapshot(aw, job_id)
        deadline = anyio.current_time() + lifetime
        while True:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            item: JobEvent | None = None
            with anyio.move_on_after(min(heartbeat, remaining)):
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    logger.debug("event stream ended: the store closed")
                    return
            if item is None:
                yield ": ping\n\n"
            elif item.kind == TRUNCATED:
                # Events after the client's id are gone from the history: it must reload.
                yield format_event({"since": item.message}, event="truncated")
                if job_id is not None:
                    yield await _snapshot(aw, job_id)
            elif job_id is None or item.job_id == job_id:
                yield format_event(item.to_dict(), id=item.id)
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _snapshot(aw: Afterwork, job_id: str) -> str:
    """The job as it is now, as a ``snapshot`` event (no ``id:``: it is no stream position).

    It is read after the subscription started, so a change made while it is read may also
    follow it as an event: events carry the whole status, so applying them in order is safe.
    """
    job = await aw.get_job(job_id)
    if job is None:
        return format_event({"job_id": job_id}, event="gone")
    return format_event(JobEvent.of(SNAPSHOT, job, aw.backend.now()).to_dict())
