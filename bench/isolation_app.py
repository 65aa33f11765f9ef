"""The tasks of bench/isolation_bench.py (an isolated task must be importable by its child)."""

from __future__ import annotations

import os

from afterwork import Afterwork

aw = Afterwork(os.environ.get("AFTERWORK_URL", "memory://"), max_jobs_per_child=None)


@aw.task(name="noop")
async def noop(n: int) -> int:
    return n


@aw.task(name="noop_isolated", isolation="process")
async def noop_isolated(n: int) -> int:
    return n
