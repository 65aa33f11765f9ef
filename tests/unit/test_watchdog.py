"""The loop-blocking detector: a sync call inside ``async def`` is reported by name."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from afterwork import Afterwork, ConfigurationError, JobStatus, Task
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio

WATCHDOG_LOGGER = "afterwork._watchdog"


@pytest.fixture
async def make_aw() -> AsyncIterator[Callable[..., Afterwork]]:
    made: list[Afterwork] = []

    def make(**settings: object) -> Afterwork:
        aw = Afterwork("memory://", clock=FakeClock(), **settings)  # type: ignore[arg-type]
        made.append(aw)
        return aw

    yield make
    for aw in made:
        await aw.aclose()


def register_blocker(aw: Afterwork) -> Task[[], Coroutine[Any, Any, None]]:
    @aw.task(name="reports:blocker")
    async def blocker() -> None:
        time.sleep(0.3)  # noqa: ASYNC251 (the mistake under test: blocking inside async def)

    return blocker


async def test_a_job_blocking_the_loop_is_reported_by_name(
    make_aw: Callable[..., Afterwork], caplog: pytest.LogCaptureFixture
) -> None:
    assert make_aw().config.block_threshold == 0.1  # the default
    # Well under the 0.3 s stall: slack for a loaded machine that delays the watchdog thread.
    aw = make_aw(block_threshold=0.05)
    blocker = register_blocker(aw)

    @aw.task(name="reports:polite")
    async def polite() -> None:
        pass

    caplog.set_level(logging.WARNING, logger=WATCHDOG_LOGGER)
    async with aw, aw.worker() as worker:
        job = await blocker.enqueue()
        await polite.enqueue()
        done = await job.wait(timeout=10)
    # Leaving the block stopped the worker and joined its watchdog: reports are written.
    assert done.status is JobStatus.SUCCEEDED
    reports = [r for r in caplog.records if r.name == WATCHDOG_LOGGER]
    assert reports, "the blocking job was not reported"
    report = next(r for r in reports if job.id in r.getMessage())
    message = report.getMessage()
    assert report.levelno == logging.WARNING
    assert f"job {job.id} (reports:blocker) blocked the event loop for " in message
    assert "(threshold 0.05s)" in message
    assert "in blocker" in message and "time.sleep(0.3)" in message
    fields = vars(report)  # the structured ``extra`` of the log line
    assert fields["action"] == "loop_blocked"
    assert fields["job"] == {
        "id": job.id,
        "task": "reports:blocker",
        "queue": "default",
        "attempt": 1,
    }
    assert fields["blocked"] >= 0.05
    assert worker.watchdog is not None
    stats = worker.watchdog.statistics()
    assert stats.per_task["reports:blocker"] >= 1
    assert "reports:polite" not in stats.per_task
    assert stats.blocks >= 1 and 0.05 <= stats.longest


async def test_stalls_below_the_threshold_are_not_reported(
    make_aw: Callable[..., Afterwork], caplog: pytest.LogCaptureFixture
) -> None:
    aw = make_aw(block_threshold=2.0)
    blocker = register_blocker(aw)
    caplog.set_level(logging.WARNING, logger=WATCHDOG_LOGGER)
    async with aw, aw.worker() as worker:
        job = await blocker.enqueue()
        await job.wait(timeout=10)
    assert worker.watchdog is not None and worker.watchdog.threshold == 2.0
    assert worker.watchdog.statistics().blocks == 0
    assert not [r for r in caplog.records if r.name == WATCHDOG_LOGGER]


async def test_the_detector_can_be_turned_off(make_aw: Callable[..., Afterwork]) -> None:
    aw = make_aw(block_threshold=None)

    @aw.task
    async def probe() -> list[str]:
        return [t.name for t in threading.enumerate()]

    async with aw, aw.worker() as worker:
        assert worker.watchdog is None
        done = await (await probe.enqueue()).wait(timeout=10)
    assert not [name for name in done.result if name.startswith("afterwork-watchdog")]

    on = make_aw()

    @on.task
    async def probe_on() -> list[str]:
        return [t.name for t in threading.enumerate()]

    async with on, on.worker() as worker:
        done = await (await probe_on.enqueue()).wait(timeout=10)
    assert f"afterwork-watchdog {worker.id}" in done.result
    assert not any(t.name.startswith("afterwork-watchdog") for t in threading.enumerate())


def test_block_threshold_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="block_threshold"):
        Afterwork("memory://", block_threshold=0)
