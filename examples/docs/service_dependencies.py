"""docs/services.md, "Dependencies": a service with a FastAPI dependency (a tested example)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends

from afterwork import Afterwork, ServiceContext

aw = Afterwork("memory://")
handled: list[str] = []


class Bus:
    """A stand-in message bus: an in-process queue with open/close."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.open = True

    @classmethod
    async def connect(cls) -> Bus:
        return BUS

    async def close(self) -> None:
        self.open = False


BUS = Bus()


@aw.task
async def handle(message: str) -> None:
    handled.append(message)


async def get_bus() -> AsyncIterator[Bus]:
    bus = await Bus.connect()
    try:
        yield bus
    finally:
        await bus.close()


@aw.service(restart="always")
async def consumer(ctx: ServiceContext, bus: Annotated[Bus, Depends(get_bus)]) -> None:
    while not ctx.stopping:
        message = await bus.queue.get()
        await handle.enqueue(message)
