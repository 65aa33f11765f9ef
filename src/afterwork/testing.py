"""Helpers for testing code that uses afterwork."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from .app import Afterwork

__all__ = ("FakeClock", "eager")

#: ``pass_time`` gives up after this many wake-ups: a loop that never stops waking is a bug.
_MAX_STEPS = 100_000


@dataclass(order=True, slots=True)
class _Timer:
    deadline: float
    seq: int
    wake: Callable[[], None] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    task: asyncio.Task[Any] | None = field(compare=False)
    live: bool = field(default=True, compare=False)


class _Deadline:
    """``with clock.move_on_at(deadline) as scope:``, cancelled when the clock gets there."""

    __slots__ = ("_clock", "_deadline", "_scope", "_timer")

    def __init__(self, clock: FakeClock, deadline: float) -> None:
        self._clock = clock
        self._deadline = deadline
        self._scope = anyio.CancelScope()
        self._timer: _Timer | None = None

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope.__enter__()
        if self._deadline <= self._clock():
            scope.cancel()
        else:
            self._timer = self._clock._add(self._deadline, scope.cancel)
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._timer is not None:
            self._clock._drop(self._timer)
        return bool(self._scope.__exit__(exc_type, exc, tb))


class FakeClock:
    """A clock that moves only when told to, for ``Afterwork(..., clock=FakeClock())``.

    It is the store's clock (job due times, lease expiry) *and* the clock every engine
    loop sleeps on: heartbeats, the reaper, claim backoff, the scheduler and service
    restart backoff. Time stands still until the test moves it, like trio's ``MockClock``:

    * :meth:`advance` (or :meth:`set`) moves the time and wakes every sleeper whose
      deadline passed, in deadline order; the woken tasks run at the test's next ``await``.
    * ``await`` :meth:`pass_time` lets time pass as it would for real: it moves to each
      deadline in turn and lets the woken tasks run until they wait on the clock again, so
      a heartbeat every 10 s beats six times in ``await clock.pass_time(60)``.
    * ``await`` :meth:`wait_blocked` waits until every task the clock woke waits on it
      again (or ended); :meth:`wait_sleepers` until ``n`` tasks sleep on it (say, a started
      worker's heartbeat and reaper loops).

    Waits that protect shutdown and callers stay on real time (a worker's ``grace``,
    ``job.wait(timeout=)``), so a clock nobody advances never hangs a test; so does a
    task's ``timeout``, which bounds real work.

    There is no ``autojump`` mode: asyncio cannot tell that every task is blocked (a task
    waiting on SQLite's thread or a Redis socket looks idle), so jumping on idleness would
    race real I/O; :meth:`pass_time` is the deterministic equivalent.

    Example:
        ```python
        clock = FakeClock()
        aw = Afterwork("memory://", clock=clock)
        ...
        await flaky.enqueue()
        await aw.drain()          # first attempt fails, retry scheduled
        clock.advance(10)
        await aw.drain()          # the retry runs

        async with aw.worker():
            await clock.wait_sleepers(2)  # heartbeat and reaper loops wait on the clock
            await clock.pass_time(60)     # a minute of heartbeats and reaper passes, at once
        ```
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        # Tasks the clock woke that have not waited on it again, nor ended.
        self._awake: set[asyncio.Task[Any]] = set()
        self._watched: set[asyncio.Task[Any]] = set()
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def __repr__(self) -> str:
        return f"FakeClock({self():.3f}, sleepers={self.sleepers})"

    # -- reading -------------------------------------------------------------------------

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def now(self) -> float:
        """The current time, seconds since the epoch (the same as calling the clock)."""
        return self()

    @property
    def sleepers(self) -> int:
        """How many tasks wait on this clock."""
        with self._lock:
            return len({t.task for t in self._timers if t.live})

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline anyone waits for (``None``: nobody waits)."""
        with self._lock:
            self._prune()
            return self._timers[0].deadline if self._timers else None

    # -- moving --------------------------------------------------------------------------

    def advance(self, seconds: float) -> float:
        """Move the clock forward, wake the sleepers now due; return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            now = self._now + seconds
        self._jump(now)
        return now

    def set(self, now: float) -> None:
        """Set the time (backwards too); sleepers now due wake."""
        self._jump(float(now))

    async def pass_time(self, seconds: float, *, timeout: float = 10.0) -> float:
        """Let ``seconds`` pass, waking each sleeper at its own deadline; return the time.

        Before each step and after the last, the tasks the clock woke run until they wait
        on it again (see :meth:`wait_blocked`, which ``timeout`` bounds, in real seconds).
        """
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        target = self() + seconds
        await self.wait_blocked(timeout=timeout)
        for _ in range(_MAX_STEPS):
            deadline = self.next_deadline
            if deadline is None or deadline > target:
                break
            self._jump(max(deadline, self()))
            await self.wait_blocked(timeout=timeout)
        else:
            raise RuntimeError(f"more than {_MAX_STEPS} wake-ups in {seconds}s of fake time")
        if target > self():
            self._jump(target)
        await self.wait_blocked(timeout=timeout)
        return self()

    # -- waiting for the tasks -----------------------------------------------------------

    async def wait_blocked(self, *, timeout: float = 10.0) -> None:
        """Wait until every task the clock woke waits on it again, or ended.

        Raises:
            TimeoutError: after ``timeout`` real seconds some woken task still runs, or
                waits for something other than the clock (a restarted service, say: wait
                for its own condition instead).
        """
        await self._wait(lambda: not self._awake, timeout, "the woken tasks to block again")

    async def wait_sleepers(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` tasks sleep on the clock.

        Raises:
            TimeoutError: fewer did within ``timeout`` real seconds.
        """
        await self._wait(lambda: self.sleepers >= count, timeout, f"{count} sleeper(s)")

    async def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        with anyio.move_on_after(timeout) as scope:
            while not done():
                event = asyncio.Event()
                listener = (loop, event)
                self._listeners.add(listener)
                try:
                    await event.wait()
                finally:
                    self._listeners.discard(listener)
        if scope.cancelled_caught:
            awake = ", ".join(sorted(task.get_name() for task in self._awake)) or "none"
            raise TimeoutError(
                f"FakeClock: waited {timeout:g}s for {what}; "
                f"sleeping: {self.sleepers}, woken and still running: {awake}"
            )

    # -- the engine's side: what EngineClock asks for --------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time."""
        await self.sleep_until(self() + seconds)

    async def sleep_until(self, deadline: float) -> None:
        """Return once the clock reached ``deadline``."""
        if deadline <= self():
            await anyio.lowlevel.checkpoint()
            return
        event = asyncio.Event()
        timer = self._add(deadline, event.set)
        try:
            await event.wait()
        finally:
            self._drop(timer)

    def move_on_after(self, seconds: float) -> _Deadline:
        """Like ``anyio.move_on_after``, on this clock's time."""
        return _Deadline(self, self() + seconds)

    def move_on_at(self, deadline: float) -> _Deadline:
        """Like ``anyio.move_on_after`` to an absolute ``deadline`` of this clock."""
        return _Deadline(self, deadline)

    # -- internals -----------------------------------------------------------------------

    def _add(self, deadline: float, wake: Callable[[], None]) -> _Timer:
        task = asyncio.current_task()
        timer = _Timer(deadline, next(self._seq), wake, asyncio.get_running_loop(), task)
        with self._lock:
            heapq.heappush(self._timers, timer)
        if task is not None:
            self._awake.discard(task)
        self._notify()
        return timer

    def _drop(self, timer: _Timer) -> None:
        with self._lock:
            timer.live = False
            self._prune()
        self._notify()

    def _prune(self) -> None:
        while self._timers and not self._timers[0].live:
            heapq.heappop(self._timers)

    def _jump(self, now: float) -> None:
        due: list[_Timer] = []
        with self._lock:
            self._now = now
            self._prune()
            while self._timers and self._timers[0].deadline <= now:
                timer = heapq.heappop(self._timers)
                if timer.live:
                    timer.live = False
                    due.append(timer)
                self._prune()
        for timer in due:
            if timer.task is not None:
                # Awake from now on, even if the wake-up itself runs later on another
                # thread's loop: wait_blocked must not return before the task ran.
                self._awake.add(timer.task)
        for timer in due:  # in deadline order: asyncio runs the woken tasks in this order
            self._on_loop(timer.loop, functools.partial(self._fire, timer))

    def _fire(self, timer: _Timer) -> None:
        task = timer.task
        if task is not None:
            if task.done():
                self._awake.discard(task)
            elif task not in self._watched:
                self._watched.add(task)
                task.add_done_callback(self._forget)
        timer.wake()
        self._notify()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._awake.discard(task)
        self._watched.discard(task)
        self._notify()

    def _notify(self) -> None:
        for loop, event in list(self._listeners):
            self._on_loop(loop, event.set)

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop, func: Callable[[], None]) -> None:
        """Call ``func`` now if we run on ``loop``, else soon on ``loop``'s thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            func()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(func)


# -- eager mode and pytest fixtures (docs/testing.md) ---------------------------------------


@contextlib.contextmanager
def eager(aw: Afterwork, enabled: bool = True) -> Iterator[Afterwork]:
    """Run ``aw``'s registered tasks inline for the ``with`` block (see ``docs/testing.md``).

    Example:
        ```python
        with eager(aw):
            client.post("/signup", json={"email": "a@example.com"})
        assert outbox == ["a@example.com"]
        ```
    """
    previous, aw.eager = aw.eager, enabled
    try:
        yield aw
    finally:
        aw.eager = previous


#: How long the ``afterwork_joined`` fixture waits after a test, in seconds.
JOIN_TIMEOUT = 10.0

try:
    import pytest
except ImportError:  # pragma: no cover - fixtures only exist where pytest does
    pass
else:

    @pytest.fixture
    def afterwork_eager(afterwork_app: Afterwork) -> Iterator[Afterwork]:
        """``afterwork_app`` (a fixture of yours returning your instance) in eager mode for
        the test, then back. Enable with ``pytest_plugins = ["afterwork.testing"]``."""
        with eager(afterwork_app):
            yield afterwork_app

    @pytest.fixture
    def afterwork_joined(afterwork_app: Afterwork) -> Iterator[Afterwork]:
        """``afterwork_app``; after the test, waits (``JOIN_TIMEOUT`` at most) until no job
        is due or running, so a test's jobs never leak into the next one (sync tests)."""
        yield afterwork_app
        afterwork_app.join_sync(timeout=JOIN_TIMEOUT)
