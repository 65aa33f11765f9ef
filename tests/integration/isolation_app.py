"""The app of the isolation test: three bad jobs and many normal ones on one worker.

Run with ``python -m afterwork worker tests.integration.isolation_app:aw --isolation
process``; the store comes from ``AFTERWORK_URL``, the busy loop writes its process ids
into ``AFTERWORK_TEST_PIDS``.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from afterwork import Afterwork, Retry

aw = Afterwork(lease_ttl=5.0, poll_interval=0.1, reaper_interval=0.5, kill_grace=1.0)
AGAIN = Retry.fixed(0.1)


@aw.task(name="segfault", retries=1, backoff=AGAIN)
def segfault() -> None:
    ctypes.string_at(0)


@aw.task(name="busy", timeout=0.5, retries=1, backoff=AGAIN)
def busy() -> None:
    with open(Path(os.environ["AFTERWORK_TEST_PIDS"]), "a") as pids:
        pids.write(f"{os.getpid()}\n")
    while True:
        pass


@aw.task(name="hog", max_memory_mb=200, retries=1, backoff=AGAIN)
def hog() -> int:
    keep = []
    for _ in range(300):  # 3 GB at most, 10 MB at a time
        keep.append(bytearray(10 * 1024 * 1024))
        time.sleep(0.002)
    return len(keep)


@aw.task(name="normal")
def normal(n: int) -> int:
    return n * 2
