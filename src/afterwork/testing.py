"""Helpers for testing code that uses afterwork."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Afterwork

__all__ = ("FakeClock", "eager")


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
