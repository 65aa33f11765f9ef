"""``afterwork.testing.FakeClock``: time that moves only when the test says, and the real one."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from afterwork import Afterwork
from afterwork._clock import SYSTEM_CLOCK, EngineClock, SystemClock, engine_clock
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0


async def test_reading_and_moving_keep_the_old_api() -> None:
    clock = FakeClock(100.0)
    assert clock() == clock.now() == 100.0
    assert clock.advance(2.5) == 102.5
    clock.set(50.0)  # backwards too
    assert clock() == 50.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert FakeClock()() == START


async def test_advance_wakes_due_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async with anyio.create_task_group() as group:
        for name, seconds in (("c", 3.0), ("a", 1.0), ("d", 9.0), ("b", 2.0)):
            group.start_soon(nap, name, seconds)
        await clock.wait_sleepers(4)
        assert clock.next_deadline == START + 1.0
        clock.advance(0.5)
        await clock.wait_blocked()
        assert woke == []  # nothing was due yet
        clock.advance(2.5)  # t+3: a, b and c are due, d is not
        await clock.wait_blocked()
        assert woke == ["a", "b", "c"]
        assert clock.sleepers == 1
        clock.advance(6)
        await clock.wait_blocked()
    assert woke == ["a", "b", "c", "d"]
    assert clock.sleepers == 0 and clock.next_deadline is None


async def test_pass_time_wakes_each_sleeper_at_its_own_deadline() -> None:
    clock = FakeClock()
    beats: list[float] = []
    reaps: list[float] = []

    async def every(seconds: float, log: list[float]) -> None:
        while True:
            await clock.sleep(seconds)
            log.append(clock() - START)

    async with anyio.create_task_group() as group:
        group.start_soon(every, 10.0, beats)
        group.start_soon(every, 25.0, reaps)
        await clock.wait_sleepers(2)
        assert await clock.pass_time(60) == START + 60
        group.cancel_scope.cancel()
    assert beats == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # advance(60) would give one beat
    assert reaps == [25.0, 50.0]


async def test_sleep_until_and_already_passed_deadlines() -> None:
    clock = FakeClock()
    await clock.sleep(0)  # due at once: returns without waiting on the clock
    await clock.sleep_until(START - 5)
    assert clock.sleepers == 0
    done = anyio.Event()

    async def until() -> None:
        await clock.sleep_until(START + 30)
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(until)
        await clock.wait_sleepers(1)
        clock.set(START + 29.9)
        await clock.wait_blocked()
        assert not done.is_set()
        clock.set(START + 30)
        with anyio.fail_after(10):
            await done.wait()


async def test_move_on_after_is_cancelled_by_the_clock_only() -> None:
    clock = FakeClock()
    never = anyio.Event()
    scopes: list[anyio.CancelScope] = []

    async def wait_with_timeout() -> None:
        with clock.move_on_after(30) as scope:
            await never.wait()
        scopes.append(scope)

    async with anyio.create_task_group() as group:
        group.start_soon(wait_with_timeout)
        await clock.wait_sleepers(1)
        await clock.pass_time(29)
        assert scopes == []
        await clock.pass_time(1)
    (scope,) = scopes
    assert scope.cancelled_caught
    assert clock.sleepers == 0

    with clock.move_on_at(clock() - 1) as late:  # already due: cancelled at the first await
        await anyio.lowlevel.checkpoint()
    assert late.cancelled_caught
    with clock.move_on_after(10) as early:  # left early: its timer goes away
        pass
    assert not early.cancelled_caught and clock.sleepers == 0


async def test_a_cancelled_sleeper_leaves_the_clock() -> None:
    clock = FakeClock()
    async with anyio.create_task_group() as group:
        group.start_soon(clock.sleep, 10.0)
        await clock.wait_sleepers(1)
        group.cancel_scope.cancel()
    assert clock.sleepers == 0 and clock.next_deadline is None


async def test_wait_blocked_names_a_woken_task_that_does_not_come_back() -> None:
    clock = FakeClock()
    elsewhere = anyio.Event()

    async def wanders() -> None:
        await clock.sleep(1)
        await elsewhere.wait()  # woken by the clock, then waits for something else

    async with anyio.create_task_group() as group:
        group.start_soon(wanders, name="wanderer")
        await clock.wait_sleepers(1)
        clock.advance(1)
        with pytest.raises(TimeoutError, match="wanderer"):
            await clock.wait_blocked(timeout=0.01)
        elsewhere.set()
        await clock.wait_blocked()  # it ended: nothing is awake any more
    with pytest.raises(TimeoutError, match="3 sleeper"):
        await clock.wait_sleepers(3, timeout=0.01)


async def test_advance_from_another_thread_wakes_the_loops_sleepers() -> None:
    clock = FakeClock()
    done = anyio.Event()

    async def nap() -> None:
        await clock.sleep(5)
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(nap)
        await clock.wait_sleepers(1)
        await anyio.to_thread.run_sync(clock.advance, 5)
        with anyio.fail_after(10):
            await done.wait()


async def test_the_engine_clock_is_the_fake_one_or_real_time() -> None:
    fake = FakeClock()
    assert isinstance(fake, EngineClock)
    assert engine_clock(fake) is fake
    assert engine_clock(lambda: 5.0) is SYSTEM_CLOCK  # reads the time, cannot sleep on it
    assert engine_clock(None) is SYSTEM_CLOCK
    assert Afterwork("memory://", clock=fake).clock is fake
    reading_only = Afterwork("memory://", clock=lambda: 5.0)
    assert reading_only.clock is SYSTEM_CLOCK and reading_only.backend.now() == 5.0
    assert Afterwork("memory://").clock is SYSTEM_CLOCK


async def test_the_system_clock_is_real_time() -> None:
    clock = SystemClock()
    assert repr(clock) == "SystemClock()"
    assert abs(clock.now() - clock()) < 1.0
    await clock.sleep(0)
    await clock.sleep_until(clock.now() - 1)
    with clock.move_on_after(0) as scope:
        await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    with clock.move_on_at(clock.now() + 3600) as far:
        pass
    assert not far.cancelled_caught
