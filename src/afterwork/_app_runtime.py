"""What a process runs for the facade: an in-process worker, a drain, the whole runtime.

A mixin of :class:`~afterwork.app.Afterwork`, kept apart so the facade module stays small;
``aw.lifespan`` and the ``afterwork worker`` command run :meth:`ProcessRuntime.runtime`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, cast

import anyio

if TYPE_CHECKING:
    from ._engine.host import Host
    from ._engine.scheduler import Scheduler
    from ._engine.services import ServiceSupervisor
    from ._engine.worker import Worker
    from ._settings import Settings

__all__ = ("ProcessRuntime",)


class ProcessRuntime:
    """``worker``/``drain``/``runtime``: the worker, the scheduler and the services."""

    if TYPE_CHECKING:
        config: Settings
        scheduler: Scheduler
        supervisor: ServiceSupervisor

        async def _ensure_open(self) -> None: ...

    def worker(
        self,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        grace: float | None = None,
        name: str | None = None,
    ) -> AbstractAsyncContextManager[Worker]:
        """An in-process worker that runs for the ``async with`` block.

        It starts before the block's body and stops gracefully when the block exits.
        """
        return self._worker(concurrency=concurrency, queues=queues, grace=grace, name=name)

    @asynccontextmanager
    async def _worker(
        self,
        *,
        concurrency: int | None,
        queues: Sequence[str] | None,
        grace: float | None,
        name: str | None,
    ) -> AsyncIterator[Worker]:
        from ._engine.worker import Worker

        await self._ensure_open()
        worker = Worker(
            cast("Host", self),  # Afterwork is one
            concurrency=concurrency or self.config.concurrency,
            queues=queues,
            grace=self.config.grace if grace is None else grace,
            name=name,
            services=self.supervisor.running_here,
        )
        async with anyio.create_task_group() as group:
            await group.start(worker.run)
            try:
                yield worker
            finally:
                worker.stop()

    async def drain(
        self, *, queues: Sequence[str] | None = None, concurrency: int | None = None
    ) -> int:
        """Run jobs until none is due, then return how many ran (tests, scripts)."""
        from ._engine.worker import Worker

        await self._ensure_open()
        worker = Worker(
            cast("Host", self),  # Afterwork is one
            concurrency=concurrency or self.config.concurrency,
            queues=queues,
            grace=self.config.grace,
            burst=True,
        )
        return await worker.run()

    def runtime(
        self,
        *,
        worker: bool = True,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        grace: float | None = None,
        name: str | None = None,
    ) -> AbstractAsyncContextManager[Worker | None]:
        """Everything a process runs for afterwork, for the ``async with`` block.

        ``aw.lifespan`` and the ``afterwork worker`` command both run this: the worker
        (unless ``worker=False``), the scheduler (if there are schedules; safe in every
        process) and the services. It yields the worker, or ``None``, once all of them
        have started; a service that fails to start raises
        :class:`~afterwork.exceptions.ServiceStartError` here.
        """
        return self._runtime(
            worker=worker, concurrency=concurrency, queues=queues, grace=grace, name=name
        )

    @asynccontextmanager
    async def _runtime(
        self,
        *,
        worker: bool,
        concurrency: int | None,
        queues: Sequence[str] | None,
        grace: float | None,
        name: str | None,
    ) -> AsyncIterator[Worker | None]:
        await self._ensure_open()
        async with contextlib.AsyncExitStack() as stack:
            # Services start first, so one that fails to start fails the runtime before
            # anything else runs (and unwrapped); they stop last, after the worker.
            if self.supervisor.specs:
                await stack.enter_async_context(self.supervisor.running())
            if self.scheduler.schedules:
                await stack.enter_async_context(self.scheduler.running())
            running: Worker | None = None
            if worker:
                running = await stack.enter_async_context(
                    self.worker(concurrency=concurrency, queues=queues, grace=grace, name=name)
                )
            yield running
