"""The app the fleet-wide concurrency proof runs in worker processes (issue 13).

Each attempt appends its start and end to a per-process ledger with ``os.write`` on an
``O_APPEND`` file, which survives ``kill -9``: the ground truth of what ran when.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from afterwork import Afterwork, JobContext, RateLimit

aw = Afterwork(
    os.environ.get("AFTERWORK_URL", "memory://"),
    lease_ttl=2.0,
    heartbeat_interval=0.5,
    reaper_interval=0.5,
    poll_interval=0.1,
    grace=1.0,
)

_ledger: int | None = None


def _write(record: dict[str, object]) -> None:
    global _ledger
    if _ledger is None:
        path = os.path.join(os.environ["AFTERWORK_LEDGER"], f"{os.getpid()}.jsonl")
        _ledger = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_ledger, (json.dumps(record) + "\n").encode())


@aw.task(name="capped", retries=3, concurrency=3)
async def capped(n: int, seconds: float, ctx: JobContext) -> int:
    common = {"job": ctx.id, "attempt": ctx.attempt, "pid": os.getpid()}
    _write({"ev": "start", **common, "t": time.time_ns()})
    await asyncio.sleep(seconds)
    _write({"ev": "end", **common, "t": time.time_ns()})
    return n


@aw.task(name="rated", rate_limit=RateLimit(50, per=1.0))
async def rated(n: int, ctx: JobContext) -> int:
    # ``s``: the attempt's start as the store stamped it (``started_at``), the time the
    # rate limit's log holds; ``t``: when the code ran, by this process's wall clock.
    started = ctx.job.started_at
    _write({"ev": "rated", "job": ctx.id, "pid": os.getpid(), "t": time.time_ns(), "s": started})
    return n
