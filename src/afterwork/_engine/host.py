"""What the engine needs from the instance it works for, and the runs it tracks locally.

The engine (worker, runner, scheduler, services) sees a :class:`Host`, never the
:class:`~afterwork.Afterwork` facade: the task registry, the store (whose ``now()`` is
the clock), the settings, the random source of jitter, the jobs running in this process,
the served app's dependency overrides, and (as a job's owner) ``get_job`` and
``wait_for_job``. ``Afterwork`` satisfies it structurally.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .._settings import Settings
from ..backends.base import NewJob, Store
from ..job import JobOwner

if TYPE_CHECKING:
    from ..task import Task
    from .inline import InlineRunner
    from .worker import Worker

__all__ = ("Host", "LocalRuns")


class Host(JobOwner, Protocol):
    """The narrow interface the engine works against (``Afterwork`` satisfies it).

    As a :class:`~afterwork.job.JobOwner` it also binds the jobs the engine hands out.
    """

    @property
    def backend(self) -> Store:
        """The store jobs live in (its ``now()`` is the clock)."""
        ...

    @property
    def config(self) -> Settings:
        """The instance's settings."""
        ...

    @property
    def rng(self) -> random.Random:
        """The random source of backoff and restart jitter (seeded in tests)."""
        ...

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """The task registry, by name."""
        ...

    @property
    def local_runs(self) -> LocalRuns:
        """The jobs this process runs (workers and inline runs), for local cancels."""
        ...

    def build_job(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> NewJob:
        """A validated new job of ``task`` (the scheduler enqueues ticks with it)."""
        ...

    def dependency_overrides(self) -> Mapping[Callable[..., Any], Callable[..., Any]]:
        """The served app's ``dependency_overrides`` (empty when no app is served)."""
        ...


class LocalRuns:
    """The jobs this process runs: its workers and the in-process runner of ``add_task``.

    ``Afterwork.cancel`` calls :meth:`cancel` so a job running here stops at once (other
    processes learn of the cancel from their next heartbeat); ``Afterwork.aclose`` calls
    :meth:`stop_workers`.
    """

    def __init__(self, host: Host) -> None:
        self._host = host
        self.workers: set[Worker] = set()
        self._inline: InlineRunner | None = None

    @property
    def inline(self) -> InlineRunner:
        """The runner of plain callables given to ``Jobs.add_task`` (created on first use)."""
        if self._inline is None:
            from .inline import InlineRunner

            self._inline = InlineRunner(self._host)
        return self._inline

    def cancel(self, job_id: str) -> bool:
        """Cancel ``job_id`` wherever it runs in this process; ``True`` if it ran here."""
        found = False
        for worker in list(self.workers):
            found = worker.cancel_local(job_id) or found
        if self._inline is not None:
            found = self._inline.cancel_local(job_id) or found
        return found

    def stop_workers(self) -> None:
        """Stop every local worker at once (running jobs are released)."""
        for worker in list(self.workers):
            worker.stop(now=True)
