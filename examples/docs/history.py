from __future__ import annotations

import time

from afterwork import Afterwork
from afterwork.history import History

aw = Afterwork("memory://")
history = History(aw)  # every attempt this process runs is tallied into its minute


@aw.task(retries=1)
async def send_report(day: str) -> str:
    return f"report for {day}"


async def last_hour() -> list[tuple[str | None, int, int, float | None]]:
    """Per task over the last hour: attempts, failures, run p95 in seconds."""
    until = time.time()
    points = await aw.history(since=until - 3600, until=until, step=3600, by=("task",))
    return [(p.task, p.attempts, p.failed + p.retried, p.run_p95) for p in points]
