"""The facade's calls on stored jobs: read, list, cancel, retry, wait for, watch.

A mixin of :class:`~afterwork.app.Afterwork`, kept apart so the facade module stays small.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio

from ._waiting import explain
from .backends.base import (
    EventStream,
    Inspector,
    JobFilter,
    QueueStats,
    WorkerInfo,
    WorkerPresence,
)
from .job import Job, JobEvent, JobStatus

if TYPE_CHECKING:
    from ._engine.local import LocalRuns
    from ._settings import Settings
    from .backends.base import Store
    from .history import HistoryPoint
    from .task import Task

__all__ = ("JobCalls",)

T = TypeVar("T")


class JobCalls:
    """``get_job``/``list_jobs``/``cancel``/``retry``/``stats``/``workers``/``history``/
    ``purge`` and ``wait_for_job``/``join``/``watch``/``events``."""

    if TYPE_CHECKING:
        backend: Store
        config: Settings
        eager: bool
        tasks: dict[str, Task[Any, Any]]
        _local_runs: LocalRuns

        async def _ensure_open(self) -> None: ...

        def run_sync(self, func: Callable[[], Awaitable[T]]) -> T:
            """Defined by :class:`~afterwork.app.Afterwork`."""

        async def drain(
            self, *, queues: Sequence[str] | None = None, concurrency: int | None = None
        ) -> int:
            """Defined by :class:`~afterwork._app_runtime.ProcessRuntime`."""

    async def get_job(self, job_id: str) -> Job | None:
        """The job with ``job_id``, or ``None``.

        A waiting job held back by a paused queue, a concurrency or rate limit, or a
        debounce window says so in :attr:`~afterwork.job.Job.waiting_reason` (read from
        the store's limit state now).
        """
        await self._ensure_open()
        job = self._local_runs.unwritten(job_id) or await self.backend.get(job_id)
        if job is None:
            return None
        return (await explain(self.backend, self.tasks, job)).bind(self)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a waiting one at once, a running one within a heartbeat.

        Returns the job as it is after the request (``None`` if there is no such job).
        """
        await self._ensure_open()
        job = self._local_runs.cancel_unwritten(job_id) or await self.backend.cancel(job_id)
        if job is not None and job.status is JobStatus.RUNNING:
            self._local_runs.cancel(job_id)
        return None if job is None else job.bind(self)

    async def retry(self, job_id: str) -> Job | None:
        """Run a failed or cancelled job again, with a fresh attempt budget."""
        await self._ensure_open()
        job = await self._inspector().retry(job_id)
        return None if job is None else job.bind(self)

    async def list_jobs(
        self,
        *,
        status: JobStatus | Iterable[JobStatus] | None = None,
        queue: str | None = None,
        task: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs, newest first. ``before`` is the id of the last job of the previous page."""
        await self._ensure_open()
        statuses: tuple[JobStatus, ...]
        if status is None:
            statuses = ()
        elif isinstance(status, JobStatus):
            statuses = (status,)
        else:
            statuses = tuple(status)
        query = JobFilter(
            statuses=statuses, queue=queue, task=task, before=before, limit=max(1, min(limit, 1000))
        )
        return [job.bind(self) for job in await self._inspector().list_jobs(query)]

    async def stats(self) -> list[QueueStats]:
        """Per-queue job counts per status."""
        await self._ensure_open()
        return await self._inspector().stats()

    async def workers(self) -> list[WorkerInfo]:
        """The live workers sharing this store, oldest first (``[]`` if it keeps none).

        Each worker refreshes its record with its heartbeat; one that dies disappears
        within its lease (``lease_ttl``).
        """
        await self._ensure_open()
        backend = self.backend
        return await backend.list_workers() if isinstance(backend, WorkerPresence) else []

    async def history(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        step: float = 60.0,
        task: str | None = None,
        queue: str | None = None,
        by: Sequence[Literal["task", "queue"]] = ("task", "queue"),
    ) -> list[HistoryPoint]:
        """Per-minute history recorded by :class:`afterwork.history.History`, summed into steps.

        Args:
            since: start, in seconds since the epoch (default: an hour before ``until``);
                rounded down to its minute.
            until: end, excluded (default: the end of the current minute).
            step: seconds per point, a whole number of minutes (60, 300, 3600, ...).
            task: only this task. queue: only this queue.
            by: group the points by ``"task"``, ``"queue"``, both, or neither (``()``).

        Returns:
            The steps that saw an attempt end (empty ones are left out), oldest first;
            ``[]`` on a store that keeps no history.

        .. versionadded:: 0.2
        """
        from .history import read_history

        await self._ensure_open()
        return await read_history(
            self.backend, since=since, until=until, step=step, task=task, queue=queue, by=by
        )

    async def purge(self, *, older_than: float | None = None) -> int:
        """Delete finished jobs past their ``result_ttl`` (or finished ``older_than`` s ago)."""
        await self._ensure_open()
        return await self._inspector().purge(older_than=older_than)

    def _inspector(self) -> Inspector:
        if not isinstance(self.backend, Inspector):
            raise TypeError(f"{type(self.backend).__name__} does not support inspection")
        return self.backend

    async def wait_for_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Wait until the job is finished; return it.

        Raises:
            TimeoutError: it did not finish in time.
            JobNotFound: there is no such job.
        """
        from .exceptions import JobNotFound

        await self._ensure_open()
        with anyio.fail_after(timeout):
            async with contextlib.aclosing(self.backend.events()) as events:
                iterator = aiter(events)
                exhausted = False
                while True:
                    job = self._local_runs.unwritten(job_id) or await self.backend.get(job_id)
                    if job is None:
                        raise JobNotFound(job_id)
                    if job.is_finished:
                        return job.bind(self)
                    # Wake on an event about the job, or poll: events may be lossy.
                    with anyio.move_on_after(self.config.poll_interval):
                        if exhausted:
                            await anyio.sleep(self.config.poll_interval)
                        while not exhausted:
                            try:
                                event = await anext(iterator)
                            except StopAsyncIteration:
                                exhausted = True
                                break
                            if event.job_id == job_id:
                                break

    async def join(self, *, timeout: float | None = None) -> None:
        """Wait until no job is due or running: queued, scheduled with its time come,
        or running (a worker's, or a plain callable of ``Jobs.add_task``).

        For tests and scripts: assert on a job's side effects after it. Jobs delayed
        into the future are not waited for. In eager mode, due jobs run here.

        Raises:
            TimeoutError: some were still due or running after ``timeout`` seconds.
        """
        from . import _join

        await self._ensure_open()
        await self._local_runs.settle(timeout)  # in-process jobs ended and written
        await _join.join(
            self.backend,
            timeout=timeout,
            poll_interval=self.config.poll_interval,
            run_due=self.drain if self.eager else None,
        )

    def join_sync(self, *, timeout: float | None = None) -> None:
        """:meth:`join` from sync code (a test using ``TestClient``)."""
        self.run_sync(lambda: self.join(timeout=timeout))

    async def watch(
        self, job_id: str, *, since: str | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """One job's state, then every change, ending at a final state (end-user progress).

        The first item is a ``snapshot`` event (the job as it is now); then each of the
        job's events (``progress``, ``retrying``, ...), in order; the iteration ends after
        the first one whose status is final. Every event but a snapshot has an ``id``: pass
        the last one seen as ``since`` to resume after a reconnect, missing nothing (on a
        store that keeps an event history; if it no longer reaches back, a fresh snapshot
        comes first). ``afterwork.fastapi.job_event_stream`` serves this as SSE.

        Raises:
            JobNotFound: there is no such job.

        Example:
            ```python
            async for event in aw.watch(job.id):
                print(event.status, event.progress)
            ```
        """
        from . import _watch

        await self._ensure_open()
        events = _watch.watch(self.backend, job_id, self.get_job, since=since)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    def events(self) -> EventStream:
        """Every job's state changes from this call on (in-process subscribers, SSE).

        The subscription starts when this is called, so nothing in between is missed.
        Call it while the instance is open (inside ``async with aw`` or the lifespan);
        ``aclose()`` the stream, or let the instance close, to end it.

        Example:
            ```python
            async with contextlib.aclosing(aw.events()) as events:
                async for event in events:
                    print(event.kind, event.job_id)
            ```
        """
        return self.backend.events()
