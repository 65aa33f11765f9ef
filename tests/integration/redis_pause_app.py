"""The worker of the paused-Redis enqueue test: it records every run of every job.

Run with ``python -m afterwork worker tests.integration.redis_pause_app:aw``; the server
comes from ``AFTERWORK_URL`` (a plain ``redis://host:port/db``), the key prefix from
``AFTERWORK_TEST_PREFIX``, and each run appends ``<job id> <n>`` to ``AFTERWORK_TEST_RUNS``.
The worker's socket timeout is as short as the enqueuer's, and each job takes 50 ms, so the
worker is busy when Redis stops and the pause times its calls out too (claims, starts,
finishes, heartbeats), not only the enqueues.
"""

from __future__ import annotations

import os
import time

from afterwork import Afterwork, JobContext
from afterwork.backends.redis import RedisBackend

store = RedisBackend(
    os.environ["AFTERWORK_URL"],
    prefix=os.environ["AFTERWORK_TEST_PREFIX"],
    socket_timeout=0.2,
    retry_for=0.4,
)
aw = Afterwork(backend=store, lease_ttl=3.0, poll_interval=0.05, reaper_interval=0.5)


@aw.task(name="record")
def record(n: int, ctx: JobContext) -> int:
    time.sleep(0.05)  # long enough that the worker is mid-drain when Redis stops
    with open(os.environ["AFTERWORK_TEST_RUNS"], "a") as runs:
        runs.write(f"{ctx.job.id} {n}\n")
    return n
