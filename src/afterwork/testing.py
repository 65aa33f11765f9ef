"""Helpers for testing code that uses afterwork."""

from __future__ import annotations

import threading

__all__ = ("FakeClock",)


class FakeClock:
    """A clock that moves only when told to: ``Afterwork(..., clock=FakeClock())``.

    Example:
        ```python
        clock = FakeClock()
        aw = Afterwork("memory://", clock=clock)
        ...
        await flaky.enqueue()
        await aw.drain()          # first attempt fails, retry scheduled
        clock.advance(10)
        await aw.drain()          # the retry runs
        ```
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward; return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            self._now = float(now)
