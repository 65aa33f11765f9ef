from __future__ import annotations

import anyio
from fastapi import FastAPI

from afterwork import Afterwork, Retry, ServiceContext

aw = Afterwork("memory://")
latest_status: dict[str, str] = {}


@aw.task
async def notify(message: str) -> None: ...


@aw.service(restart="on-failure", backoff=Retry.exponential(base=1.0, cap=60.0))
async def status_updater(ctx: ServiceContext) -> None:
    while True:
        latest_status["clinic"] = "open"  # poll something, keep it fresh
        await anyio.sleep(5)


@aw.service(ready="explicit", shutdown_timeout=5.0)
async def queue_consumer(ctx: ServiceContext) -> None:
    send, receive = anyio.create_memory_object_stream[str](100)  # stands in for a broker
    async with send, receive:
        ctx.ready()  # the app starts serving only once the consumer is connected
        async for message in receive:
            await notify.enqueue(message)


app = FastAPI(lifespan=aw.lifespan)
