from __future__ import annotations

import anyio
from fastapi import FastAPI

from afterwork import Afterwork, ServiceContext

aw = Afterwork("memory://")  # your shared store: "sqlite:///./afterwork.db", "redis://…"
mailbox: list[str] = ["hello"]  # stands in for an IMAP inbox
handled: list[str] = []
warm: dict[str, str] = {}


@aw.task
async def handle_mail(message: str) -> None:
    handled.append(message)


@aw.service(singleton=True, lease_ttl=15)
async def inbox_poller(ctx: ServiceContext) -> None:
    """Two pollers would handle every message twice: run one in the whole fleet."""
    while True:
        while mailbox:
            await handle_mail.enqueue(mailbox.pop(0))
        await anyio.sleep(1)


@aw.service  # the default: one instance in every process (a per-process cache)
async def cache_warmer(ctx: ServiceContext) -> None:
    while True:
        warm["config"] = "loaded"
        await anyio.sleep(60)


app = FastAPI(lifespan=aw.lifespan)
