"""The app of the poison-job test: one job that kills its worker, healthy ones beside it.

Run with ``python -m afterwork worker tests.integration.poison_app:aw``; the store comes from
``AFTERWORK_URL``. Leases are short so that a dead worker's jobs come back within a test.
"""

from __future__ import annotations

import os
import signal

import anyio

from afterwork import Afterwork

aw = Afterwork(
    lease_ttl=1.0,
    heartbeat_interval=0.3,
    reaper_interval=0.2,
    poll_interval=0.2,
    grace=5.0,
    max_recoveries=3,
)


@aw.task(name="poison")
async def poison() -> None:
    """Kills the process running it, as a segfault in a C extension would."""
    os.kill(os.getpid(), signal.SIGSEGV)


@aw.task(name="healthy")
async def healthy(n: int) -> int:
    await anyio.sleep(1.0)
    return n
