"""The loop-blocking detector: names the job that blocks the worker's event loop.

A sync call inside ``async def`` (``time.sleep``, ``requests.get``, a sync database
driver) freezes every job and request sharing the loop. A watchdog thread pings the loop
while jobs run; when a ping waits longer than ``block_threshold``, it captures the loop
thread's stack at that moment (the blocking call is on it), finds the job whose asyncio
task is running, and logs a warning once the loop answers again.

A stall longer than ``threshold + interval`` is always seen; a stall shorter than
``threshold`` never is. The cost is one thread per worker and, while jobs run, one callback
on the loop per interval.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from .runner import log_extra

if TYPE_CHECKING:
    from .runner import JobRun

__all__ = ("JOB_TASK_PREFIX", "BlockStatistics", "LoopWatchdog")

# The logger keeps the name it had when this module was ``afterwork._watchdog``.
logger: logging.Logger = logging.getLogger("afterwork._watchdog")

#: The worker names each job's asyncio task ``JOB_TASK_PREFIX + job id``.
JOB_TASK_PREFIX = "afterwork job "

#: Innermost frames of the loop thread's stack put in a report.
MAX_FRAMES = 25


class _Watched(Protocol):
    id: str

    @property
    def running(self) -> list[JobRun]: ...


@dataclass(frozen=True, slots=True)
class BlockStatistics:
    """What a :class:`LoopWatchdog` has seen (``worker.watchdog.statistics()``).

    Attributes:
        blocks: stalls of the event loop reported so far.
        longest: the longest stall, in seconds.
        per_task: stalls by the name of the task whose job blocked the loop; a stall no
            job can be blamed for counts in ``blocks`` only.
    """

    blocks: int
    longest: float
    per_task: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    culprit: JobRun | None
    asyncio_task: str | None
    running: list[JobRun]
    stack: str | None


class LoopWatchdog:
    """Watches a worker's event loop from a daemon thread.

    Args:
        worker: the worker whose jobs to blame (its ``id`` and ``running`` jobs).
        threshold: seconds a ping may wait before the loop counts as blocked.
        interval: seconds between pings; default half the threshold.
    """

    def __init__(self, worker: _Watched, threshold: float, *, interval: float | None = None):
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        self.worker = worker
        self.threshold = threshold
        self.interval: float = interval if interval is not None else threshold / 2
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._answered = threading.Event()
        self._answered_at = 0.0
        self._lock = threading.Lock()
        self._blocks = 0
        self._longest = 0.0
        self._per_task: Counter[str] = Counter()

    def statistics(self) -> BlockStatistics:
        """The stalls reported so far."""
        with self._lock:
            return BlockStatistics(
                blocks=self._blocks,
                longest=self._longest,
                per_task=MappingProxyType(dict(self._per_task)),
            )

    def start(self) -> None:
        """Start watching the running event loop (call it on the loop's thread)."""
        if self._thread is not None:
            raise RuntimeError("this watchdog was already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, name=f"afterwork-watchdog {self.worker.id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a stall being reported is reported first."""
        self._stopping.set()
        self._answered.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # -- the watchdog thread ---------------------------------------------------------------

    def _answer(self, answered: threading.Event) -> None:
        # Runs on the loop: the time it ran says how long the loop kept the ping waiting.
        self._answered_at = time.monotonic()
        answered.set()

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stopping.wait(self.interval):
            if not self.worker.running:
                continue  # only jobs' stalls are ours to report
            answered = self._answered = threading.Event()
            if self._stopping.is_set():
                return
            sent = time.monotonic()
            try:
                loop.call_soon_threadsafe(self._answer, answered)
            except RuntimeError:  # the loop is closed
                return
            if answered.wait(self.threshold):
                lag = self._answered_at - sent
                if lag > self.threshold:
                    # This thread was itself kept from running (a loaded machine) and missed
                    # the stall in the act: report it without the stack.
                    self._report(self._snapshot(None), lag, still_blocked=False)
                continue
            snapshot = self._snapshot(loop)
            ended = answered.wait(max(1.0, 10 * self.threshold))
            if ended and not self._stopping.is_set():
                blocked = self._answered_at - sent
            else:
                blocked = time.monotonic() - sent
            self._report(snapshot, blocked, still_blocked=not ended)
            answered.wait()  # a long stall is reported once

    def _snapshot(self, loop: asyncio.AbstractEventLoop | None) -> _Snapshot:
        """What the loop is doing now; ``loop=None``: a stall already over, only the jobs."""
        running = self.worker.running
        if loop is None:
            return _Snapshot(None, None, running, None)
        current = asyncio.current_task(loop)
        name = current.get_name() if current is not None else None
        culprit = None
        if name is not None and name.startswith(JOB_TASK_PREFIX):
            job_id = name.removeprefix(JOB_TASK_PREFIX)
            culprit = next((run for run in running if run.job.id == job_id), None)
        frame = sys._current_frames().get(self._loop_thread or 0)
        return _Snapshot(culprit, name, running, _format_stack(frame))

    def _report(self, snapshot: _Snapshot, blocked: float, *, still_blocked: bool) -> None:
        culprit = snapshot.culprit
        with self._lock:
            self._blocks += 1
            self._longest = max(self._longest, blocked)
            if culprit is not None:
                self._per_task[culprit.job.task] += 1
        duration = f"{'at least ' if still_blocked else ''}{blocked:.2f}s"
        stack = f"; the loop's thread was at:\n{snapshot.stack}" if snapshot.stack else ""
        extra: dict[str, Any] = {"blocked": blocked, "threshold": self.threshold}
        if culprit is not None:
            logger.warning(
                "job %s (%s) blocked the event loop for %s (threshold %gs): a blocking call "
                "in async code; run it with `await anyio.to_thread.run_sync(...)` or make "
                "the task a plain `def`%s",
                culprit.job.id,
                culprit.job.task,
                duration,
                self.threshold,
                stack,
                extra=log_extra("loop_blocked", culprit.job, self.worker.id, **extra),
            )
            return
        jobs = ", ".join(f"{run.job.id} ({run.job.task})" for run in snapshot.running)
        if snapshot.asyncio_task is not None:
            blamed = f"by asyncio task {snapshot.asyncio_task!r}, not a job,"
        elif snapshot.stack is not None:
            blamed = "by a callback, not a job,"
        else:
            blamed = "(the blocking call was not caught in the act)"
        logger.warning(
            "the event loop was blocked for %s (threshold %gs) %s while jobs ran: %s%s",
            duration,
            self.threshold,
            blamed,
            jobs or "none",
            stack,
            extra={"action": "loop_blocked", "worker": {"id": self.worker.id}, **extra},
        )


def _format_stack(frame: FrameType | None) -> str | None:
    if frame is None:
        return None
    # Walk the frames first, without I/O, while they are still those of the stall; read
    # the source lines afterwards.
    entries: list[tuple[str, int, str, None]] = []
    while frame is not None and len(entries) < MAX_FRAMES:
        entries.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None))
        frame = frame.f_back
    entries.reverse()
    return "".join(traceback.StackSummary.from_list(entries).format()).rstrip("\n")
