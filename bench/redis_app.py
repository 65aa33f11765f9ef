"""The afterwork app the Redis benchmark runs in its worker process."""

from __future__ import annotations

import asyncio
import os

from afterwork import Afterwork

aw = Afterwork(os.environ.get("AFTERWORK_URL", "memory://"))


@aw.task(name="noop")
async def noop() -> None:
    return None


@aw.task(name="sleepy")
async def sleepy() -> None:
    await asyncio.sleep(0.05)
