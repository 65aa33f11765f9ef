"""``Jobs``: a ``BackgroundTasks``-compatible dependency whose tasks are tracked jobs."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, overload

from fastapi import BackgroundTasks, Depends, HTTPException, Request

from ..backends.base import NewJob
from ..exceptions import BackendError
from ..job import Job, new_job_id
from ..task import Task

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("Jobs", "JobsManager", "PendingJob", "get_afterwork")

logger: logging.Logger = logging.getLogger(__name__)

P = ParamSpec("P")


def _declared(app: Any) -> Afterwork | None:
    """The instance ``app`` names: attached (lifespan, ``aw.attach``) or as its lifespan."""
    from ..app import Afterwork

    aw = getattr(getattr(app, "state", None), "afterwork", None)
    if isinstance(aw, Afterwork):
        return aw
    # FastAPI(lifespan=aw.lifespan) or lifespan=aw.lifespan(worker=False), not run (yet):
    # a module-level TestClient(app) without ``with`` never runs the lifespan.
    lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
    found = getattr(lifespan, "__self__", None) or getattr(lifespan, "afterwork", None)
    return found if isinstance(found, Afterwork) else None


_announced: set[int] = set()  # instances whose lazy use was logged (once each)


def _announce(aw: Afterwork) -> None:
    if id(aw) in _announced:
        return
    _announced.add(id(aw))
    logger.info(
        "Jobs: the app's lifespan has not started afterwork; the store (%s) opens on first "
        "use and no worker runs in this process: registered tasks wait for a worker%s",
        aw.location,
        " (eager mode: they run inline here)" if aw.eager else "",
        extra={"action": "jobs_lazy_open", "store": aw.location},
    )


def get_afterwork(request: Request) -> Afterwork:
    """The :class:`Afterwork` instance serving this app.

    Set by ``aw.lifespan`` or ``aw.attach(app)``; found without either when the app was
    created with ``lifespan=aw.lifespan`` but the lifespan did not run (a ``TestClient``
    used without ``with``): the store then opens on first use, as logged once.
    """
    aw = getattr(request.app.state, "afterwork", None)
    if aw is not None:
        return aw  # type: ignore[no-any-return]
    found = _declared(request.app)
    if found is None:
        raise RuntimeError(
            "no Afterwork instance is attached to this app: create it with "
            "FastAPI(lifespan=aw.lifespan), enter aw.lifespan(app) in your own lifespan, "
            "or call aw.attach(app)"
        )
    _announce(found)
    return found


@dataclass(frozen=True, slots=True)
class PendingJob:
    """What ``jobs.add_task`` returns: the id the job will have once it is stored."""

    id: str
    task: str


@dataclass(frozen=True, slots=True)
class _Plain:
    """A plain callable given to ``add_task``: run in this process after the response."""

    id: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _describe(func: Callable[..., Any]) -> str:
    if isinstance(func, functools.partial):
        return _describe(func.func)
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}:{name}"


def _is_async_callable(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or (
        not inspect.isfunction(func) and inspect.iscoroutinefunction(type(func).__call__)
    )


class JobsManager:
    """Tasks to run after the response is sent, each tracked as a job.

    Prefer the ``Jobs`` annotation in a route's parameters.

    * A registered task (``@aw.task``) is validated when added and stored **before the
      response is sent** (all of a request's tasks in one round trip), with its own retry
      and timeout policy; any worker may run it. If the store cannot be reached, the
      request fails with ``503`` and nothing was enqueued: never a ``200`` for a job that
      was never stored.
    * Any other callable, sync or async, runs in this process after the response, as a
      job with a status, a timing, and its error and traceback recorded and logged. Its
      arguments stay in memory (they need not be JSON), so it is not retried and does not
      survive a restart: register it as a task for that.

    One task failing never skips the others.
    """

    def __init__(self, aw: Afterwork, background: BackgroundTasks) -> None:
        self.aw = aw
        # In call order: a plain callable (run here after the response), or a registered
        # task's job in eager mode (run here after the response, stored as it starts).
        self._pending: list[_Plain | NewJob] = []
        self._new: list[NewJob] = []  # registered tasks' jobs, stored by ``store()``
        background.add_task(self._run_all)

    async def store(self) -> None:
        """Store the jobs of registered tasks added so far, in one round trip.

        The ``Jobs`` dependency calls this after the route returns and before the response
        is sent, so a store that cannot be reached fails the request (``503``).
        """
        new, self._new = self._new, []
        if not new:
            return
        try:
            await self.aw.enqueue_many(new)
        except BackendError as exc:
            logger.error(
                "could not store %d job(s) added with jobs.add_task: %s",
                len(new),
                exc,
                extra={"action": "add_task_unstored", "jobs": [job.id for job in new]},
            )
            raise HTTPException(
                503,
                "the job store cannot be reached; nothing was enqueued",
                headers={"Retry-After": "1"},
            ) from exc

    @overload
    def add_task(self, func: Task[Any, Any], /, *args: Any, **kwargs: Any) -> PendingJob: ...

    @overload
    def add_task(
        self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> PendingJob: ...

    def add_task(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> PendingJob:
        """Run ``func(*args, **kwargs)`` after the response is sent, as a tracked job."""
        if not callable(func):
            raise TypeError(f"add_task() needs a callable, not {type(func).__name__}")
        if isinstance(func, Task):
            # Validate now, in the route, so bad arguments fail the request, not silently.
            new = self.aw.build_job(func, args, kwargs, {})
            if self.aw.eager:
                self._pending.append(new)
            else:
                self._new.append(new)
            return PendingJob(new.id, func.name)
        job_id = new_job_id()
        self._pending.append(_Plain(job_id, func, args, kwargs))
        return PendingJob(job_id, _describe(func))

    async def _run_all(self) -> None:
        if self._new:
            # A manager built by hand, without the ``Jobs`` dependency: store them now.
            try:
                await self.store()
            except HTTPException:
                pass  # logged by store()
        pending, self._pending = self._pending, []
        for entry in pending:
            try:
                if isinstance(entry, _Plain):
                    await self._run_inline(entry.id, entry.func, entry.args, entry.kwargs)
                else:
                    await self.aw.run_eager(entry)
            except Exception:
                name = _describe(entry.func) if isinstance(entry, _Plain) else entry.task
                logger.exception(
                    "background task %s (job %s) could not be run",
                    name,
                    entry.id,
                    extra={"action": "add_task_failed", "job": {"id": entry.id}},
                )

    async def _run_inline(
        self, job_id: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Job | None:
        """Run a plain callable here and now, tracked as a job (see ``_engine/inline.py``)."""
        await self.aw.open()
        return await self.aw.local_runs.inline.run(
            job_id, func, args, kwargs, name=_describe(func), is_async=_is_async_callable(func)
        )


async def _jobs_dependency(
    request: Request, background: BackgroundTasks
) -> AsyncIterator[JobsManager]:
    manager = JobsManager(get_afterwork(request), background)
    yield manager
    # Runs when the route returned, before the response is sent (scope="function"): a
    # failure to store is the request's own error. A route that raised stores nothing.
    await manager.store()


#: Use as a route parameter: ``async def route(jobs: Jobs): jobs.add_task(...)``.
Jobs = Annotated[JobsManager, Depends(_jobs_dependency, scope="function")]
