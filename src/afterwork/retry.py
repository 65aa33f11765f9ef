"""Retry policies and the :class:`Retry` signal a job raises to ask for another attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ("Backoff", "ExponentialBackoff", "FixedBackoff", "Retry")


@runtime_checkable
class Backoff(Protocol):
    """How long to wait before the next attempt.

    ``failures`` is the number of failed attempts so far (1 after the first failure).
    """

    def delay(self, failures: int, rng: random.Random) -> float: ...


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``base * 2 ** (failures - 1)`` seconds, capped at ``cap``.

    With ``jitter`` (the default) the delay is drawn uniformly from ``[0, that]``: "full
    jitter", which spreads a burst of failures out instead of retrying them in lockstep.
    """

    base: float = 1.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must not be negative")

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` failed attempts."""
        exponent = min(max(failures - 1, 0), 64)  # 2**64 already dwarfs any cap
        return float(min(self.cap, self.base * 2.0**exponent))

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = self.ceiling(failures)
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling


@dataclass(frozen=True, slots=True)
class FixedBackoff:
    """The same delay before every retry."""

    seconds: float = 0.0

    def delay(self, failures: int, rng: random.Random) -> float:
        return self.seconds


class Retry(Exception):
    """Raise from a job to ask for another attempt after ``delay`` seconds.

    The attempt counts against the task's ``retries``; with none left the job fails.

    The class also builds backoff policies for ``@aw.task(backoff=...)``.

    Example:
        ```python
        @aw.task(retries=5, backoff=Retry.exponential(base=1.0, cap=60.0))
        async def fetch(url: str) -> None:
            if rate_limited():
                raise Retry.later(30)
        ```
    """

    delay: float

    def __init__(self, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError("Retry delay must not be negative")
        super().__init__(f"retry requested in {delay:g}s")
        self.delay = float(delay)

    @classmethod
    def later(cls, seconds: float) -> Retry:
        """Ask for another attempt in ``seconds``."""
        return cls(seconds)

    @staticmethod
    def exponential(base: float = 1.0, cap: float = 300.0, *, jitter: bool = True) -> Backoff:
        """Exponential backoff with full jitter, capped at ``cap`` seconds."""
        return ExponentialBackoff(base=base, cap=cap, jitter=jitter)

    @staticmethod
    def fixed(seconds: float) -> Backoff:
        """The same delay before every retry."""
        return FixedBackoff(seconds)
