"""The app the Redis chaos tests run in worker processes (``python -m afterwork worker``).

Each job appends JSON lines to a per-process ledger with ``os.write`` on an ``O_APPEND``
file: that survives ``kill -9`` (RELIABILITY.md §0) and is the ground truth.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from afterwork import Afterwork, JobContext

aw = Afterwork(
    os.environ.get("AFTERWORK_URL", "memory://"),
    lease_ttl=2.0,
    heartbeat_interval=0.5,
    reaper_interval=0.5,
    grace=1.0,
)

_ledger: int | None = None


def _write(record: dict[str, object]) -> None:
    global _ledger
    if _ledger is None:
        folder = os.environ["AFTERWORK_LEDGER"]
        path = os.path.join(folder, f"{os.getpid()}.jsonl")
        _ledger = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_ledger, (json.dumps(record) + "\n").encode())


@aw.task(name="chaos", retries=3)
async def chaos(n: int, seconds: float, ctx: JobContext) -> int:
    common = {"job": ctx.id, "attempt": ctx.attempt, "pid": os.getpid()}
    _write({"ev": "start", **common, "t": time.time_ns(), "mono": time.monotonic_ns()})
    await asyncio.sleep(seconds)
    _write({"ev": "end", **common, "t": time.time_ns(), "mono": time.monotonic_ns()})
    return n
