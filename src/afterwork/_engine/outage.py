"""One warning when the store becomes unreachable, one when it is back: not one per retry.

A worker talks to its store from three loops (claims, heartbeats, the reaper). While the
store is down each of them fails again and again; logging each failure with its traceback
buried the one line that mattered (about 1,000 lines in 30 s). :class:`Outage` turns them
into two WARNING lines: when the first call fails (with that traceback), and when a call
succeeds again (how long it lasted, how many calls failed). Failures in between go to
DEBUG. Right after an outage a client's pooled connections may still be stale: one failed
call within :data:`SETTLE` seconds of the end is logged at DEBUG, and only a second one in
a row starts a new outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ("MAX_RECONNECT_DELAY", "SETTLE", "Outage", "reconnect_delay")

logger: logging.Logger = logging.getLogger("afterwork.worker")

#: The longest a worker waits between two attempts to reach its store, in seconds.
MAX_RECONNECT_DELAY = 5.0
#: Seconds after an outage during which a single failed call does not start a new one.
SETTLE = 5.0


def reconnect_delay(failures: int, jitter: float) -> float:
    """Seconds to wait after ``failures`` failed calls in a row (``jitter`` in [0, 1)).

    Doubles from 0.1 s and is capped at :data:`MAX_RECONNECT_DELAY`; jitter takes up to
    half off, so a fleet does not retry in lockstep.
    """
    base: float = 0.1 * 2.0 ** min(failures, 16)
    return min(MAX_RECONNECT_DELAY, base) * (0.5 + jitter / 2)


class Outage:
    """Tracks whether the store is reachable, for one worker's logs."""

    def __init__(self, worker_id: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker_id = worker_id
        self._clock = clock
        self.since: float | None = None
        self.failures = 0
        self._ended: float | None = None

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, what: str, exc: BaseException, **extra: Any) -> None:
        """A call to the store (``what``: "claim", "heartbeat", "reaper") failed."""
        self.failures += 1
        fields = {"action": "store_unreachable", "worker": {"id": self.worker_id}, **extra}
        settling = self._ended is not None and self._clock() - self._ended < SETTLE
        if self.since is None and not (settling and self.failures == 1):
            self.since = self._clock()
            logger.warning(
                "worker %s cannot reach its store (%s failed: %s: %s); retrying quietly, "
                "at most every %gs, until it is back",
                self.worker_id,
                what,
                type(exc).__name__,
                exc,
                MAX_RECONNECT_DELAY,
                exc_info=exc,
                extra=fields,
            )
        else:
            logger.debug(
                "worker %s: %s failed again (%s: %s)",
                self.worker_id,
                what,
                type(exc).__name__,
                exc,
                extra={**fields, "action": "store_retry_failed"},
            )

    def succeeded(self) -> None:
        """A call to the store succeeded: ends an outage (and says how long it lasted)."""
        if self.since is None:
            self.failures = 0
            return
        self._ended = self._clock()
        lasted = self._ended - self.since
        failures, self.since, self.failures = self.failures, None, 0
        logger.warning(
            "worker %s reached its store again after %.1fs (%d failed call(s))",
            self.worker_id,
            lasted,
            failures,
            extra={
                "action": "store_reachable",
                "worker": {"id": self.worker_id},
                "outage": {"seconds": lasted, "failures": failures},
            },
        )
