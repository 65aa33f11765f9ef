"""One job's progress for an end user: SSE and WebSocket, behind the app's own auth.

Both serve :meth:`Afterwork.watch`: the job's state first, then each change, ending at a
final state. Unlike ``aw.router()``'s ``/events``, they show one job and nothing else, so
a route can check that the job belongs to the user before it returns one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocket, WebSocketState

from ..exceptions import JobNotFound
from ._sse import RETRY_MS, format_event

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("job_event_stream", "send_job_events")

#: The SSE event that ends a job's stream: the browser should ``close()`` its EventSource
#: (else it reconnects, and gets the final state again).
END = "end"


def job_event_stream(
    aw: Afterwork,
    job_id: str,
    *,
    last_event_id: str | None = None,
    heartbeat: float = 15.0,
) -> StreamingResponse:
    """Server-Sent Events of one job: its state, then each change, then an ``end`` event.

    Each message's ``data`` is the event as JSON (``kind``, ``status``, ``progress``,
    ``message``, ...) and its ``id:`` the store's event id: pass the request's
    ``Last-Event-ID`` header as ``last_event_id`` so that a reconnecting ``EventSource``
    misses nothing. An unknown job gets a ``gone`` event. Check the job belongs to the user
    before you return this (see ``docs/fastapi.md``).

    Example:
        ```python
        @app.get("/uploads/{job_id}/progress")
        async def progress(job_id: str, request: Request, user: CurrentUser):
            await check_owner(user, job_id)
            return job_event_stream(aw, job_id, last_event_id=request.headers.get("last-event-id"))
        ```
    """
    return StreamingResponse(
        _sse(aw, job_id, last_event_id or None, heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _sse(
    aw: Afterwork, job_id: str, since: str | None, heartbeat: float
) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    events = aw.watch(job_id, since=since)
    async with contextlib.aclosing(events):
        try:
            while True:
                with anyio.move_on_after(heartbeat) as waited:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                if waited.cancelled_caught:
                    yield ": ping\n\n"
                    continue
                yield format_event(event.to_dict(), id=event.id)
        except JobNotFound:
            yield format_event({"job_id": job_id}, event="gone")
            return
    yield format_event({"job_id": job_id}, event=END)


async def send_job_events(websocket: WebSocket, aw: Afterwork, job_id: str) -> None:
    """Send one job's events over ``websocket`` as JSON, then close it at a final state.

    Accepts the connection if the route has not. The client may resume with the last
    event ``id`` it saw as the ``since`` query parameter. An unknown job closes the
    socket with code 4404.

    Example:
        ```python
        @app.websocket("/uploads/{job_id}/ws")
        async def progress_ws(websocket: WebSocket, job_id: str):
            await send_job_events(websocket, aw, job_id)
        ```
    """
    if websocket.application_state is WebSocketState.CONNECTING:
        await websocket.accept()
    since = websocket.query_params.get("since") or None
    events = aw.watch(job_id, since=since)
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                await websocket.send_json(event.to_dict())
    except JobNotFound:
        await websocket.close(code=4404, reason="no such job")
        return
    await websocket.close(code=1000)
