"""The scheduler: cron and interval ticks, DST, misfires and exactly-once, on a fake clock."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from typer.testing import CliRunner

from afterwork import Afterwork, ConfigurationError, JobContext
from afterwork._engine.scheduler import MAX_SLEEP, CronTrigger, IntervalTrigger, Scheduler
from afterwork.backends.memory import MemoryBackend
from afterwork.exceptions import ScheduleNotFound
from afterwork.job import Job
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """A UTC instant as seconds since the epoch."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def tick_of(job: Job) -> float:
    """The tick a scheduled job was enqueued for (its key is ``schedule@ISO tick``)."""
    assert job.key is not None
    return datetime.fromisoformat(job.key.rpartition("@")[2]).timestamp()


async def sweep(aw: Afterwork, clock: FakeClock, until: float, step: float) -> list[Job]:
    """Move the clock to ``until`` in ``step``s, running a scheduler pass at each step."""
    jobs = await aw.scheduler.run_pending()
    while clock() < until:
        clock.advance(min(step, until - clock()))
        jobs += await aw.scheduler.run_pending()
    return jobs


@pytest.fixture
async def aw_clock() -> AsyncIterator[tuple[Afterwork, FakeClock]]:
    clock = FakeClock(ts(2024, 1, 1))
    aw = Afterwork("memory://", clock=clock)
    async with aw:
        yield aw, clock


# -- triggers -------------------------------------------------------------------------


def test_interval_ticks_fall_on_multiples_since_the_epoch() -> None:
    trigger = IntervalTrigger(30)
    assert trigger.latest(1_000_000_015.5) == 999_999_990.0
    assert trigger.latest(1_000_000_020.0) == 1_000_000_020.0
    assert trigger.next_after(1_000_000_020.0) == 1_000_000_050.0
    assert trigger.spec == "0:00:30"


def test_cron_next_and_latest_in_a_time_zone() -> None:
    trigger = CronTrigger("0 9 * * *", "Europe/Paris")
    # 2024-06-01 is summer time: 09:00 in Paris is 07:00 UTC.
    assert trigger.next_after(ts(2024, 6, 1, 6)) == ts(2024, 6, 1, 7)
    assert trigger.next_after(ts(2024, 6, 1, 7)) == ts(2024, 6, 2, 7)
    assert trigger.latest(ts(2024, 6, 1, 7)) == ts(2024, 6, 1, 7)
    assert trigger.latest(ts(2024, 6, 1, 6, 59)) == ts(2024, 5, 31, 7)
    # Six fields with 0 seconds read as five.
    assert CronTrigger("0 0 9 * * *", "Europe/Paris").next_after(ts(2024, 6, 1)) == ts(
        2024, 6, 1, 7
    )


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("61 * * * *", "UTC", "invalid cron expression"),
        ("* * *", "UTC", "invalid cron expression"),
        ("0 0 30 2 *", "UTC", "invalid cron expression"),  # February 30th never comes
        ("0 9 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_cron_is_rejected_at_declaration(expr: str, tz: str, message: str) -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ConfigurationError, match=message):

        @aw.cron(expr, tz=tz)
        async def job() -> None: ...


def test_bad_declarations() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ConfigurationError, match="at least 1 second"):
        aw.every(timedelta(milliseconds=10))
    with pytest.raises(TypeError, match="called without arguments"):

        @aw.every(60)
        async def needs_args(user_id: int) -> None: ...

    with pytest.raises(ConfigurationError, match="misfire"):

        @aw.every(60, misfire="burst")  # type: ignore[arg-type]
        async def bad_misfire() -> None: ...

    @aw.every(60)
    async def twice() -> None: ...

    with pytest.raises(ValueError, match="already exists"):
        aw.every(120)(twice)
    aw.every(120, name="twice-slow")(twice)  # a second schedule of the same task, named
    other = Afterwork("memory://")
    with pytest.raises(ValueError, match="another Afterwork"):
        other.every(60)(twice)


# -- DST --------------------------------------------------------------------------------


async def test_spring_forward_0230_runs_once_at_0300(
    aw_clock: tuple[Afterwork, FakeClock],
) -> None:
    aw, clock = aw_clock

    @aw.cron("30 2 * * *", tz="America/New_York")
    async def nightly() -> None: ...

    clock.set(ts(2024, 3, 9, 12))
    jobs = await sweep(aw, clock, ts(2024, 3, 11, 12), step=300)
    # 03-10 is the spring-forward day: 02:30 does not exist; it runs at 03:00 EDT.
    assert [tick_of(job) for job in jobs] == [ts(2024, 3, 10, 7), ts(2024, 3, 11, 6, 30)]


async def test_fall_back_0130_runs_once_at_its_first_occurrence(
    aw_clock: tuple[Afterwork, FakeClock],
) -> None:
    aw, clock = aw_clock

    @aw.cron("30 1 * * *", tz="America/New_York")
    async def nightly() -> None: ...

    clock.set(ts(2024, 11, 2, 12))
    jobs = await sweep(aw, clock, ts(2024, 11, 4, 12), step=300)
    # 11-03 is the fall-back day: 01:30 EDT (05:30 UTC) runs, 01:30 EST does not.
    assert [tick_of(job) for job in jobs] == [ts(2024, 11, 3, 5, 30), ts(2024, 11, 4, 6, 30)]


async def test_hourly_follows_elapsed_time_across_fall_back(
    aw_clock: tuple[Afterwork, FakeClock],
) -> None:
    aw, clock = aw_clock

    @aw.cron("0 * * * *", tz="America/New_York")
    async def hourly() -> None: ...

    # The local day of 2024-11-03 lasts 25 hours: 04:00 UTC to 05:00 UTC the next day.
    clock.set(ts(2024, 11, 3, 4))
    jobs = await sweep(aw, clock, ts(2024, 11, 4, 4, 59), step=600)
    ticks = [tick_of(job) for job in jobs]
    assert len(ticks) == 25
    assert ticks == [ts(2024, 11, 3, 4) + 3600 * i for i in range(25)]


# -- interval and misfires --------------------------------------------------------------


async def test_every_enqueues_one_job_per_interval(aw_clock: tuple[Afterwork, FakeClock]) -> None:
    aw, clock = aw_clock
    ran: list[float] = []

    @aw.every(timedelta(seconds=30))
    async def poll(ctx: JobContext) -> None:
        ran.append(tick_of(ctx.job))

    start = clock()
    jobs = await sweep(aw, clock, start + 120, step=1)
    assert [tick_of(job) for job in jobs] == [start + 30 * i for i in range(5)]
    assert await aw.drain() == 5
    assert sorted(ran) == [tick_of(job) for job in jobs]


@pytest.mark.parametrize("misfire", ["run_once", "skip"])
async def test_a_long_gap_never_bursts(
    aw_clock: tuple[Afterwork, FakeClock], misfire: Any, caplog: pytest.LogCaptureFixture
) -> None:
    aw, clock = aw_clock

    @aw.every(60, misfire=misfire)
    async def minutely() -> None: ...

    start = clock()
    assert [tick_of(j) for j in await aw.scheduler.run_pending()] == [start]
    clock.advance(6 * 3600 + 90)  # six hours of downtime; the latest tick is 30 s old
    with caplog.at_level(logging.WARNING, logger="afterwork.scheduler"):
        after_gap = await aw.scheduler.run_pending()
    # The latest tick is on time (within misfire_grace): both policies run it, alone.
    assert [tick_of(j) for j in after_gap] == [start + 6 * 3600 + 60]
    assert "were missed" in caplog.text


@pytest.mark.parametrize(("misfire", "expected"), [("run_once", 1), ("skip", 0)])
async def test_a_late_tick_runs_once_or_is_skipped(
    aw_clock: tuple[Afterwork, FakeClock], misfire: Any, expected: int
) -> None:
    aw, clock = aw_clock

    @aw.cron("0 9 * * *", misfire=misfire, misfire_grace=60)
    async def daily() -> None: ...

    clock.set(ts(2024, 5, 1, 9))
    assert len(await aw.scheduler.run_pending()) == 1
    clock.set(ts(2024, 5, 4, 11))  # down over three 09:00s; the latest is 2 hours old
    late = await aw.scheduler.run_pending()
    assert [tick_of(j) for j in late] == [ts(2024, 5, 4, 9)][:expected]
    assert await aw.scheduler.run_pending() == []
    clock.set(ts(2024, 5, 5, 9))
    assert [tick_of(j) for j in await aw.scheduler.run_pending()] == [ts(2024, 5, 5, 9)]


@pytest.mark.parametrize("misfire", ["run_once", "skip"])
async def test_ticks_a_late_pass_missed_are_each_enqueued_once(
    aw_clock: tuple[Afterwork, FakeClock], misfire: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduler that ran but whose pass came late (a blocked loop, a starved machine) was
    alive for the ticks in between: each is enqueued, whatever ``misfire`` says (that is for
    ticks that fell due while no scheduler ran)."""
    aw, clock = aw_clock

    @aw.every(1, misfire=misfire)
    async def beat() -> None: ...

    start = clock()
    assert [tick_of(j) for j in await aw.scheduler.run_pending()] == [start]
    clock.advance(3.5)  # no pass for 3.5 s
    with caplog.at_level(logging.WARNING, logger="afterwork.scheduler"):
        late = await aw.scheduler.run_pending()
    assert [tick_of(j) for j in late] == [start + 1, start + 2, start + 3]
    assert "pass came late" in caplog.text
    assert await aw.scheduler.run_pending() == []
    clock.advance(1)
    assert [tick_of(j) for j in await aw.scheduler.run_pending()] == [start + 4]


async def test_a_pass_that_ends_past_the_next_tick_does_not_sleep_over_it(
    aw_clock: tuple[Afterwork, FakeClock],
) -> None:
    aw, clock = aw_clock

    @aw.every(1)
    async def beat() -> None: ...

    await aw.scheduler.run_pending()  # decides the tick at clock()
    clock.advance(1.5)  # ... and ended 1.5 s later (a slow store write)
    assert aw.scheduler._next_wake() == pytest.approx(0, abs=0.01)  # the next tick is due


async def test_a_new_schedule_does_not_catch_up(aw_clock: tuple[Afterwork, FakeClock]) -> None:
    aw, clock = aw_clock

    @aw.cron("0 9 * * *")
    async def daily() -> None: ...

    clock.set(ts(2024, 5, 1, 10))  # deployed an hour after today's tick
    assert await aw.scheduler.run_pending() == []
    clock.set(ts(2024, 5, 2, 9, 0) + 5)
    assert len(await aw.scheduler.run_pending()) == 1


# -- exactly once -----------------------------------------------------------------------


async def test_instances_sharing_a_store_enqueue_each_tick_once() -> None:
    clock = FakeClock(ts(2024, 1, 1))
    shared = MemoryBackend(clock=clock)
    instances = [Afterwork(backend=shared) for _ in range(3)]
    for aw in instances:

        @aw.every(1, name="heartbeat")
        async def beat() -> None: ...

    rng = random.Random(7)
    created: list[Job] = []
    for _ in range(8):
        clock.advance(1)
        order = instances[:]
        rng.shuffle(order)
        for batch in await asyncio.gather(*(aw.scheduler.run_pending() for aw in order)):
            created += batch
    per_tick = Counter(tick_of(job) for job in created)
    assert sorted(per_tick) == [clock() - 7 + i for i in range(8)]
    assert set(per_tick.values()) == {1}
    assert await shared.last_tick("heartbeat") == clock()


async def test_running_schedulers_share_ticks_and_survive_one_stopping() -> None:
    """The memory variant of the three-process test: three runtimes on one store."""
    clock = FakeClock(ts(2024, 1, 1))
    shared = MemoryBackend(clock=clock)
    instances = [Afterwork(backend=shared) for _ in range(3)]
    for aw in instances:

        @aw.every(1, name="heartbeat")
        async def beat() -> None: ...

    async def step(schedulers: list[Scheduler]) -> None:
        targets = [s.passes + 1 for s in schedulers]
        clock.advance(1)
        for s in schedulers:
            s.wake()
        with anyio.fail_after(5):
            for s, target in zip(schedulers, targets, strict=True):
                await s.wait_passes(target)

    async def run(
        aw: Afterwork, stop: anyio.Event, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        async with aw, aw.runtime(worker=False):
            task_status.started()
            await stop.wait()

    stops = [anyio.Event() for _ in instances]
    schedulers = [aw.scheduler for aw in instances]
    async with anyio.create_task_group() as group:
        for aw, stop in zip(instances, stops, strict=True):
            await group.start(run, aw, stop)
        with anyio.fail_after(5):
            for s in schedulers:
                await s.wait_passes(1)
        for _ in range(3):
            await step(schedulers)
        stops[0].set()  # one scheduler goes away mid-run
        for _ in range(3):
            await step(schedulers[1:])
        for stop in stops:
            stop.set()
    jobs = await instances[1].list_jobs(limit=100)
    per_tick = Counter(tick_of(job) for job in jobs)
    start = ts(2024, 1, 1)
    assert sorted(per_tick) == [start + i for i in range(7)]
    assert set(per_tick.values()) == {1}


async def test_scheduler_loop_sleeps_until_the_next_tick() -> None:
    clock = FakeClock(ts(2024, 1, 1, 8, 59, 30))
    aw = Afterwork("memory://", clock=clock)

    @aw.cron("0 9 * * *")
    async def daily() -> None: ...

    assert aw.scheduler._next_wake() == pytest.approx(30, abs=0.01)
    clock.set(ts(2024, 1, 1, 9))
    assert aw.scheduler._next_wake() == MAX_SLEEP  # a day away: bounded


async def test_the_running_scheduler_wakes_on_the_clock_alone() -> None:
    start = ts(2024, 1, 1, 8, 59, 30)
    clock = FakeClock(start)
    aw = Afterwork("memory://", clock=clock)

    @aw.every(10, name="pulse")
    async def pulse() -> None: ...

    @aw.cron("0 9 * * *", name="daily")
    async def daily() -> None: ...

    async with aw, aw.runtime(worker=False):
        await clock.wait_sleepers(1)  # the loop sleeps until the next tick, on the clock
        await clock.pass_time(600)  # ten minutes, no wake(): every tick on time
        jobs = await aw.list_jobs(limit=1000)
    ticks = Counter((job.task, tick_of(job)) for job in jobs)
    assert set(ticks.values()) == {1}
    assert sorted(tick for task, tick in ticks if task == daily.name) == [ts(2024, 1, 1, 9)]
    pulses = sorted(tick for task, tick in ticks if task == pulse.name)
    # The tick at exactly +600 s is picked up a few ms later: the loop wakes just past a tick.
    assert pulses == [start + 10 * i for i in range(60)]


class FlakyTicks(MemoryBackend):
    """A store whose ``last_tick`` fails once."""

    failures = 1

    async def last_tick(self, schedule: str) -> float | None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store blinked")
        return await super().last_tick(schedule)


async def test_a_failing_store_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(ts(2024, 1, 1))
    aw = Afterwork(backend=FlakyTicks(clock=clock))

    @aw.every(1)
    async def beat() -> None: ...

    async with aw, aw.runtime(worker=False):
        with anyio.fail_after(5):
            await aw.scheduler.wait_passes(1)
        assert "scheduler pass failed" in caplog.text
        aw.scheduler.wake()
        with anyio.fail_after(5):
            await aw.scheduler.wait_passes(2)
        assert await aw.backend.last_tick(aw.scheduler.get(beat.name).name) == clock()


# -- listing and "run now" --------------------------------------------------------------


async def test_schedules_list_trigger_and_to_dict(aw_clock: tuple[Afterwork, FakeClock]) -> None:
    aw, clock = aw_clock
    clock.set(ts(2024, 5, 1, 6))

    @aw.cron("0 9 * * *", tz="Europe/Paris", name="report")
    async def daily_report() -> None: ...

    @aw.every(timedelta(minutes=5), misfire="skip")
    async def poll() -> None: ...

    (report, polling) = aw.schedules
    assert report.name == "report" and report.task == daily_report.name
    assert report.next_run == ts(2024, 5, 1, 7)  # 09:00 CEST
    assert report.last_run is None
    assert polling.to_dict() == {
        "name": poll.name,
        "task": poll.name,
        "kind": "every",
        "spec": "0:05:00",
        "tz": "UTC",
        "misfire": "skip",
        "next_run": ts(2024, 5, 1, 6, 5),
        "next_run_at": "2024-05-01T06:05:00+00:00",
        "last_run": None,
        "last_run_at": None,
    }
    await aw.scheduler.run_pending()
    listed = {info.name: info for info in await aw.list_schedules()}
    assert listed[poll.name].last_run == ts(2024, 5, 1, 6)
    assert listed["report"].last_run is None

    job = await aw.trigger("report")  # run now: an ordinary job, not a tick
    assert job.task == daily_report.name and job.key is None
    assert await aw.backend.last_tick("report") is None
    with pytest.raises(ScheduleNotFound):
        await aw.trigger("nope")


def test_cli_lists_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    from afterwork import cli

    aw = Afterwork("memory://")

    @aw.cron("0 9 * * *", tz="Europe/Paris", name="report")
    async def daily_report() -> None: ...

    monkeypatch.setattr(cli, "load_afterwork", lambda target: aw)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["schedules", "x:aw", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["name"] == "report" and row["tz"] == "Europe/Paris" and row["last_run"] is None
    result = runner.invoke(cli.app, ["schedules", "x:aw"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "report" in result.output and "Europe/Paris" in result.output
