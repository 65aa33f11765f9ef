"""The clock the engine's loops wait on.

STYLE.md: time is an argument. Every loop that waits for time (the worker's heartbeats,
the reaper, the claim backoff and idle poll, the scheduler, service restart backoff)
asks ``aw.clock`` rather than anyio, so a test can pass
:class:`afterwork.testing.FakeClock` and make an hour-long wait instant, as trio's
``MockClock`` does.

Contract of an :class:`EngineClock`:

* :meth:`~EngineClock.now` is seconds since the epoch; deadlines are on that scale.
* :meth:`~EngineClock.sleep` and :meth:`~EngineClock.sleep_until` return once the clock
  reached the deadline, and are cancellable like ``anyio.sleep``.
* :meth:`~EngineClock.move_on_after` and :meth:`~EngineClock.move_on_at` return a context
  manager whose ``__enter__`` gives an ``anyio.CancelScope``: the block is cancelled when
  the clock reaches the deadline (``scope.cancelled_caught`` tells).

What stays on real time, by design:

* bounds that protect shutdown and callers (a worker's ``grace``, the cleanup and service
  start/stop timeouts, ``job.wait(timeout=)``): a fake clock nobody advances must never
  hang a test's teardown;
* a task's ``timeout``: it bounds real work (I/O, a thread) that a fake clock cannot speed
  up, and tests that pass a fake clock for due times and backoff expect a hung job to time
  out on its own;
* the stores' own I/O waits (an idle worker still polls every ``poll_interval`` of real
  time; with a fake clock it also wakes when the clock passes ``poll_interval``).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import anyio

__all__ = ("SYSTEM_CLOCK", "EngineClock", "SystemClock", "engine_clock")


@runtime_checkable
class EngineClock(Protocol):
    """What the engine's loops need from a clock: read it, sleep on it, time out on it."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` by this clock."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`now` reached ``deadline``."""
        ...

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that cancels its block after ``seconds`` by this clock."""
        ...

    def move_on_at(self, deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that cancels its block once :meth:`now` reached ``deadline``."""
        ...


class SystemClock:
    """Real time: ``time.time`` to read, anyio's (monotonic) timers to wait.

    The methods are anyio's own where they can be, so the real clock adds no work to the
    worker's hot path.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "SystemClock()"

    def __call__(self) -> float:
        return time.time()

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(deadline - time.time(), 0.0))

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        return anyio.move_on_after(seconds)

    def move_on_at(self, deadline: float) -> anyio.CancelScope:
        return anyio.move_on_after(max(deadline - time.time(), 0.0))


SYSTEM_CLOCK: SystemClock = SystemClock()


def engine_clock(clock: object) -> EngineClock:
    """The clock for the loops: ``clock`` if it can sleep, else real time.

    A bare ``() -> float`` (what stores take) only says how to read the time; the loops
    then wait in real time, as before such clocks could sleep.
    """
    if isinstance(clock, EngineClock):
        return clock
    return SYSTEM_CLOCK
