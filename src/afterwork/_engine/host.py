"""What the engine needs from the instance it works for, and the runs it tracks locally.

The engine (worker, runner, scheduler, services) sees a :class:`Host`, never the
:class:`~afterwork.Afterwork` facade: the task registry, the store (whose ``now()`` is
the clock), the settings, the random source of jitter, the jobs running in this process,
the served app's dependency overrides, and (as a job's owner) ``get_job`` and
``wait_for_job``. ``Afterwork`` satisfies it structurally.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._clock import EngineClock
from .._settings import Settings
from ..backends.base import NewJob, Store
from ..job import JobOwner

if TYPE_CHECKING:
    from .._middleware import Middleware
    from ..task import Task

__all__ = ("Host", "LocalMember", "RunRegistry")


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
    def clock(self) -> EngineClock:
        """What the engine's loops sleep on: real time, or a test's ``FakeClock``."""
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
    def middleware_chain(self) -> Sequence[Middleware]:
        """The middleware around every attempt, the first outermost."""
        ...

    @property
    def local_runs(self) -> RunRegistry:
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


class LocalMember(Protocol):
    """Something that runs jobs in this process (a worker)."""

    def cancel_local(self, job_id: str) -> bool:
        """Cancel a job it runs; ``False`` if it runs none with that id."""
        ...

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; with ``now`` also release running jobs at once."""
        ...


class RunRegistry(Protocol):
    """Where workers register while they run, so local cancels and shutdown reach them."""

    def attach(self, member: LocalMember) -> None: ...

    def detach(self, member: LocalMember) -> None: ...
