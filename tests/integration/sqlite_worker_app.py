"""The app the SQLite process tests run with ``python -m afterwork worker``.

Configured from the environment (``AFTERWORK_URL``, ``AFTERWORK_TEST_LEDGER``,
``AFTERWORK_TEST_GRACE``) with a short lease so crash recovery fits in a test. Every job
appends JSON lines to ``<ledger>/<pid>.jsonl`` with ``os.write`` on an ``O_APPEND`` fd:
that write survives ``kill -9`` and is the ground truth the tests compare the store to.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from afterwork import Afterwork, JobContext

aw = Afterwork(
    lease_ttl=2.0,
    heartbeat_interval=0.5,
    reaper_interval=0.5,
    poll_interval=0.5,
    grace=float(os.environ.get("AFTERWORK_TEST_GRACE", "10")),
    concurrency=4,
)

_fd: int | None = None


def ledger(event: str, ctx: JobContext, **fields: Any) -> None:
    global _fd
    directory = os.environ.get("AFTERWORK_TEST_LEDGER")
    if not directory:
        return
    if _fd is None:
        path = os.path.join(directory, f"{os.getpid()}.jsonl")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    record = {
        "ev": event,
        "job": ctx.job.id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time_ns(),
        "mono": time.monotonic_ns(),
        **fields,
    }
    os.write(_fd, (json.dumps(record) + "\n").encode())


@aw.task(name="work")
async def work(n: int, seconds: float, ctx: JobContext) -> int:
    ledger("start", ctx)
    await asyncio.sleep(seconds)
    ledger("end", ctx)
    return n
