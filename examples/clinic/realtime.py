"""Live updates: the WebSocket screens, and the in-process message bus."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
import anyio.abc
from fastapi import Depends, WebSocket
from sqlalchemy.ext.asyncio import AsyncSession

from afterwork import Afterwork

from .models import QueueStatus, open_entries
from .schemas import QueueItem, QueueUpdate

logger = logging.getLogger(__name__)

SEND_TIMEOUT = 5.0


class QueueHub:
    """Every connected queue screen, and one way to reach them all.

    Each web process has its own screens. The broadcast job sends to this process's
    screens and publishes the update on ``SCREEN_CHANNEL``; every web process relays what
    others published to its own screens (:func:`relay_screen_updates`), so an update made
    by an ``afterwork worker`` process, or by another web process, reaches every screen.
    """

    def __init__(self) -> None:
        self.open()

    def open(self) -> None:
        """Start with no screens, on the running event loop (the app's lifespan calls this)."""
        self._screens: set[WebSocket] = set()
        # One broadcast at a time: screens see updates in order, never interleaved frames.
        self._lock = asyncio.Lock()

    async def connect(
        self, websocket: WebSocket, snapshot: Callable[[], Awaitable[QueueUpdate]]
    ) -> None:
        """Accept a screen and send it the current queue before any later update."""
        await websocket.accept()
        async with self._lock:
            await websocket.send_text((await snapshot()).model_dump_json())
            self._screens.add(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        """Forget a screen that went away."""
        self._screens.discard(websocket)

    async def broadcast(self, update: QueueUpdate) -> int:
        """Send ``update`` to every screen; return how many got it.

        A screen that fails to receive is dropped (it reconnects and gets a fresh snapshot);
        one dead screen never fails the broadcast for the others.
        """
        message = update.model_dump_json()
        delivered = 0
        async with self._lock:
            for websocket in list(self._screens):
                try:
                    with anyio.fail_after(SEND_TIMEOUT):
                        await websocket.send_text(message)
                except Exception:
                    logger.warning("dropping a queue screen that did not take an update")
                    self._screens.discard(websocket)
                else:
                    delivered += 1
        return delivered


hub = QueueHub()

#: The channel queue updates travel on between processes (``aw.publish``).
SCREEN_CHANNEL = "clinic:queue-screens"
#: This process, so that its relay skips what its own broadcasts already sent.
ORIGIN = secrets.token_hex(8)


def screen_message(update: QueueUpdate) -> dict[str, object]:
    """What the broadcast job publishes for the other processes' screens."""
    return {"origin": ORIGIN, "update": update.model_dump(mode="json")}


async def relay_screen_updates(
    aw: Afterwork, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Send the updates other processes publish to this process's screens, until cancelled.

    Subscribed before it reports started (``task_status``), so the app serves only once no
    update can slip past. A gap (this process fell behind) is logged: the next update
    carries the whole queue anyway.
    """
    async with aw.subscribe(SCREEN_CHANNEL) as messages:
        task_status.started()
        async for message in messages:
            if message.missed:
                logger.warning("queue screens missed updates from other processes")
                continue
            data = message.data
            if not isinstance(data, dict) or data.get("origin") == ORIGIN:
                continue  # our own broadcast: already sent to our screens
            await hub.broadcast(QueueUpdate.model_validate(data["update"]))


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A consultation-room device reporting on a visit."""

    entry_id: int
    status: QueueStatus


class MessageBus:
    """An in-process channel from the web routes to the status updater service.

    It stands in for the broker the original app consumed (a device gateway, a topic):
    routes ``publish``; the supervised ``status_updater`` service ``receive``s.
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self._maxsize = maxsize
        self._queue: asyncio.Queue[StatusMessage] | None = None

    def open(self) -> None:
        """Start with an empty channel (the app's lifespan calls this)."""
        self._queue = asyncio.Queue(self._maxsize)

    def _channel(self) -> asyncio.Queue[StatusMessage]:
        if self._queue is None:
            self.open()  # an ``afterwork worker`` process: a bus nobody publishes to
        assert self._queue is not None
        return self._queue

    def publish(self, message: StatusMessage) -> None:
        """Queue a message for the consumer (``asyncio.QueueFull`` when it is far behind)."""
        self._channel().put_nowait(message)

    async def receive(self) -> StatusMessage:
        """The next message, waiting for one."""
        return await self._channel().get()

    def done(self) -> None:
        """Mark the last received message handled."""
        self._channel().task_done()


bus = MessageBus()


async def queue_snapshot(db: AsyncSession, reason: str) -> QueueUpdate:
    """The whole open queue, as the screens receive it."""
    return QueueUpdate(reason=reason, entries=[QueueItem.of(e) for e in await open_entries(db)])


def get_bus() -> MessageBus:
    """The app's message bus, as a dependency (``app.dependency_overrides`` can swap it)."""
    return bus


Bus = Annotated[MessageBus, Depends(get_bus)]
