"""Server-Sent Events: the job event stream behind ``GET /events``.

The stream ends cleanly when the client goes away (Starlette cancels the generator, which
unsubscribes), when the :class:`~afterwork.Afterwork` instance closes (its store ends every
subscription: what the lifespan does at shutdown), or after ``lifetime`` seconds: then the
browser's ``EventSource`` reconnects by itself. That last bound matters because uvicorn waits
for open responses to finish *before* it runs the lifespan's shutdown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from ..backends.base import EventStream
from ..job import JobEvent

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("EventReplay", "event_stream", "format_event")

logger: logging.Logger = logging.getLogger(__name__)

#: What a browser waits before it reconnects a dropped stream, in milliseconds.
RETRY_MS = 3_000


@runtime_checkable
class EventReplay(Protocol):
    """A backend that keeps its events in a stream can resume a client after an event id.

    The event ids it hands out go in :attr:`JobEvent.id`; ``events_after(id)`` yields the
    events after that one, then live events, like ``events()``. The memory backend keeps no
    history and does not implement this: a reconnecting client starts from live events.
    """

    def events_after(self, event_id: str) -> EventStream:
        """Events after ``event_id`` (subscribed from the call on), then live ones."""
        ...


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

    Args:
        aw: whose store to follow.
        job_id: only this job's events (``None``: every job's).
        last_event_id: the ``Last-Event-ID`` a reconnecting client sent.
        heartbeat: seconds of silence after which a comment is sent, so proxies keep the
            connection open and a vanished client is noticed.
        lifetime: seconds after which the stream ends (the client reconnects).
    """
    await aw.open()
    backend = aw.backend
    stream: EventStream
    resumed = bool(last_event_id) and isinstance(backend, EventReplay)
    if resumed and isinstance(backend, EventReplay) and last_event_id:
        stream = backend.events_after(last_event_id)
    else:
        stream = backend.events()
    try:
        # Subscribed: a client may now act and be sure to see what follows.
        yield f"retry: {RETRY_MS}\n" + format_event({"resumed": resumed}, event="ready")
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
            elif job_id is None or item.job_id == job_id:
                yield format_event(item.to_dict(), id=item.id)
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
