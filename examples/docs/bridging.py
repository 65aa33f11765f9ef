"""docs/bridging.md: in each context, the one right way to enqueue and to call async code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from fastapi import FastAPI

from afterwork import Afterwork

aw = Afterwork("memory://")  # your store: "sqlite:///./afterwork.db", "redis://…"


@aw.task
async def send_report(name: str) -> str:
    return f"report {name} sent"


async def fetch_total() -> int:
    """Some async code of yours: an HTTP call, an async database query."""
    await anyio.lowlevel.checkpoint()
    return 42


app = FastAPI(lifespan=aw.lifespan)


# An async route (or async dependency) runs on the event loop: await.
@app.post("/reports/async")
async def async_route() -> dict[str, object]:
    job = await send_report.enqueue("async route")
    total = await fetch_total()
    return {"job": job.id, "total": total}


# A def route (or def dependency) runs in a worker thread: the sync twins.
@app.post("/reports/sync")
def sync_route() -> dict[str, object]:
    job = send_report.enqueue_sync("def route")
    total = anyio.from_thread.run(fetch_total)
    return {"job": job.id, "total": total}


# A script or CLI command: enqueue_sync, or one asyncio.run at the very top.
def sync_script() -> str:
    job = send_report.enqueue_sync("cron script")
    return job.id


async def main() -> str:
    async with aw:
        job = await send_report.enqueue("script")
        total = await fetch_total()
        return f"{job.id}: {total}"


if __name__ == "__main__":
    print(asyncio.run(main()))


# Any other thread (a sync library's callback, a thread you started).
def on_message(body: str, loop: asyncio.AbstractEventLoop) -> int:
    """``loop``: the app's loop, kept at startup (``asyncio.get_running_loop()``)."""
    send_report.enqueue_sync(body)
    future = asyncio.run_coroutine_threadsafe(fetch_total(), loop)
    return future.result(timeout=10)


# Inside a job: an async task awaits, and moves blocking calls off the loop...
@aw.task
async def nightly(path: str) -> int:
    await send_report.enqueue("nightly")
    total = await fetch_total()
    await anyio.to_thread.run_sync(Path(path).write_text, str(total))
    return total


# ...a def task runs in a worker thread, like a def route.
@aw.task
def export(path: str) -> int:
    send_report.enqueue_sync("export")
    total = anyio.from_thread.run(fetch_total)
    Path(path).write_text(str(total))
    return total
