"""What a running job can ask of afterwork: its identity, progress reports, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .job import Job

__all__ = ("JobContext",)


@dataclass(eq=False, kw_only=True)
class JobContext:
    """Injected into a job function by its annotation: ``ctx: JobContext``.

    Example:
        ```python
        @aw.task
        def transcode(video_id: int, ctx: JobContext) -> None:
            for step in range(10):
                if ctx.cancelled:
                    return
                ctx.progress(step / 10, f"step {step}")
        ```
    """

    job: Job
    """The job as it was claimed."""
    _report: Callable[[float, str | None], None] = field(repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancelled_async: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def task(self) -> str:
        return self.job.task

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, and so on."""
        return self.job.attempts

    @property
    def idempotency_key(self) -> str:
        """Stable across every attempt of this job: key side effects on it."""
        return self.job.key or self.job.id

    @property
    def cancelled(self) -> bool:
        """``True`` once the job was asked to stop (cancel, timeout, shutdown).

        An async job is also cancelled at its next ``await``; a sync job, which runs in a
        thread that cannot be interrupted, should check this between steps.
        """
        return self._cancelled.is_set()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress, ``0.0`` to ``1.0``. Callable from async and sync jobs alike.

        The report is written to the store in the background; a burst of reports is
        coalesced to the latest one.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0.0 and 1.0, not {fraction!r}")
        self._report(float(fraction), message)

    async def wait_cancelled(self) -> None:
        """Return once the job is asked to stop."""
        await self._cancelled_async.wait()

    def _set_cancelled(self) -> None:
        # Called on the worker's event loop thread.
        self._cancelled.set()
        self._cancelled_async.set()
