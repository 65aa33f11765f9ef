"""``Jobs``: a ``BackgroundTasks``-compatible dependency whose tasks are tracked jobs."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, overload

import anyio.to_thread
from fastapi import BackgroundTasks, Depends, HTTPException, Request

from .._engine.dependencies import Dependency, dependencies_of, resolve
from ..app import served_by
from ..backends.base import NewJob
from ..exceptions import BackendError, DependencyError
from ..job import new_job_id
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
    return _declared_router(getattr(app, "router", None))


def _declared_router(router: Any) -> Afterwork | None:
    """The instance whose lifespan ``router`` runs, even if it has not run (yet)."""
    from ..app import Afterwork

    # FastAPI(lifespan=aw.lifespan) or lifespan=aw.lifespan(worker=False), not run (yet):
    # a module-level TestClient(app) without ``with`` never runs the lifespan.
    # ``include_router`` merges the routers' lifespans into a closure holding both: look
    # inside (a few levels; no match means ``aw.attach(app)`` is needed).
    todo: list[tuple[Any, int]] = [(getattr(router, "lifespan_context", None), 0)]
    while todo:
        lifespan, depth = todo.pop()
        found = getattr(lifespan, "__self__", None) or getattr(lifespan, "afterwork", None)
        if isinstance(found, Afterwork):
            return found
        cells = getattr(lifespan, "__closure__", None) or ()
        if depth < 4:
            for cell in cells:
                with contextlib.suppress(ValueError):  # an empty cell
                    if callable(cell.cell_contents):
                        todo.append((cell.cell_contents, depth + 1))
    return None


_announced: weakref.WeakSet[Afterwork] = weakref.WeakSet()  # lazy use logged, once each


def _announce(aw: Afterwork) -> None:
    if aw in _announced:
        return
    _announced.add(aw)
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
    # A mounted sub-application: the outermost app's router is in the scope.
    root = request.scope.get("router")
    if root is not None:
        served = served_by(root)
        if served is not None:
            return served
    found = _declared(request.app) or (_declared_router(root) if root is not None else None)
    if found is None:
        raise RuntimeError(
            "no Afterwork instance is attached to this app: create it with "
            "FastAPI(lifespan=aw.lifespan), enter aw.lifespan(app) in your own lifespan, "
            "or call aw.attach(app) (for a mounted sub-application: on the app that "
            "mounts it, or on the sub-application)"
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
    dependencies: Mapping[str, Dependency] = field(default_factory=dict)


def _dependencies(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Dependency]:
    """The ``Depends`` parameters of a plain function that the call leaves unbound.

    Raises:
        DependencyError: one needs the request (``Request``, ``Security``, a header...):
            the job runs after the response, outside any request.
    """
    if not (inspect.isfunction(func) or inspect.ismethod(func)):
        return {}  # partials, builtins, callable objects: passed as they are
    target = getattr(func, "__func__", func)
    known = _plans.get(target)
    if known is None:
        known = _plans[target] = _plans_of(func)
    if isinstance(known, DependencyError):
        raise DependencyError(known.message, param=known.param) from None
    if not known:
        return {}
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = {}
    return {name: plan for name, plan in known.items() if name not in bound}


#: The ``Depends`` parameters of each plain function given to ``add_task`` (or why it
#: cannot be one): resolving annotations costs more than the rest of a request.
_plans: weakref.WeakKeyDictionary[Any, dict[str, Dependency] | DependencyError] = (
    weakref.WeakKeyDictionary()
)


def _plans_of(func: Callable[..., Any]) -> dict[str, Dependency] | DependencyError:
    try:
        plans = dependencies_of(func)
    except DependencyError as exc:
        if exc.param is None and not _mentions_depends(func):
            return {}  # annotations that cannot be resolved, and no Depends among them
        return DependencyError(
            f"jobs.add_task: {exc.message}. A job runs after the "
            "response, outside the request: pass the value it needs as an argument",
            param=exc.param,
        )
    return plans


def _mentions_depends(func: Callable[..., Any]) -> bool:
    params = inspect.signature(func).parameters.values()
    return any("Depends(" in str(p.annotation) or "Security(" in str(p.annotation) for p in params)


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
        self._background = background
        # Added and not run yet: a plain callable (run here after the response), or a
        # registered task's job in eager mode. Each is queued on the request's
        # BackgroundTasks when added, so Jobs and BackgroundTasks tasks run in call order.
        self._pending: dict[str, _Plain | NewJob] = {}
        self._new: list[NewJob] = []  # registered tasks' jobs, stored by ``store()``
        self._managed = False  # the ``Jobs`` dependency stores ``_new`` before the response
        self._late_store = False  # a manager built by hand stores ``_new`` after it
        self._background_ran = False  # the request's background tasks ran to our marker
        self._tail: tuple[object, str] | None = None  # the last task queued here, its id
        self._marker_id: str | None = None  # an entry whose run is our marker (see below)
        self._over = False  # the request is over: nothing can be added

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
        if self._over:
            raise RuntimeError(
                "jobs.add_task() after the request is over: nothing would run it. Enqueue "
                "a registered task instead (`await task.enqueue(...)`)"
            )
        if isinstance(func, Task):
            # Validate now, in the route, so bad arguments fail the request, not silently.
            new = self.aw.build_job(func, args, kwargs, {})
            if self.aw.eager:
                self._queue(new)
            else:
                self._new.append(new)
                if not self._managed and not self._late_store:
                    self._late_store = True
                    self._background.add_task(self._store_late)
            return PendingJob(new.id, func.name)
        entry = _Plain(new_job_id(), func, args, kwargs, _dependencies(func, args, kwargs))
        self._queue(entry)
        return PendingJob(entry.id, _describe(func))

    def _queue(self, entry: _Plain | NewJob) -> None:
        self._pending[entry.id] = entry
        background = self._background
        background.add_task(self._run_entry, entry.id)
        self._tail = (background.tasks[-1], entry.id)

    def _mark_when_background_ran(self) -> None:
        """When the route returned: have the request's background tasks mark, once they all
        ran, that they did. If the last of them is one of ours, its run is the mark (it
        runs last, and nothing can stop the tasks between it and a marker after it);
        otherwise a marker task is added."""
        tasks, tail = self._background.tasks, self._tail
        if tail is not None and tasks and tasks[-1] is tail[0] and tail[1] in self._pending:
            self._marker_id = tail[1]
        else:
            self._background.add_task(self._mark_background_ran)

    async def _mark_background_ran(self) -> None:
        self._background_ran = True

    async def _store_late(self) -> None:
        # A manager built by hand, without the ``Jobs`` dependency: store them now.
        try:
            await self.store()
        except HTTPException:
            pass  # logged by store()

    async def _run_entry(self, job_id: str) -> None:
        entry = self._pending.pop(job_id, None)
        if entry is None:
            if job_id == self._marker_id:
                self._background_ran = True
            return
        try:
            if isinstance(entry, _Plain):
                func = entry.func
                if entry.dependencies:
                    func = self._with_dependencies(func, entry.dependencies)
                await self._run_inline(entry.id, func, entry.args, entry.kwargs)
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
        if job_id == self._marker_id:  # the request's last background task ran
            self._background_ran = True

    def _with_dependencies(
        self, func: Callable[..., Any], plans: Mapping[str, Dependency]
    ) -> Callable[..., Any]:
        """``func`` with its ``Depends`` resolved in a job scope, torn down after the call
        (the call's exception thrown into them, as FastAPI does after a route)."""
        is_async = _is_async_callable(func)
        aw = self.aw

        @functools.wraps(func)
        async def call(*args: Any, **kwargs: Any) -> Any:
            async with contextlib.AsyncExitStack() as stack:
                values = await resolve(plans, stack, overrides=aw.dependency_overrides())
                if is_async:
                    return await func(*args, **kwargs, **values)
                bound = functools.partial(func, *args, **kwargs, **values)
                return await anyio.to_thread.run_sync(bound)

        return call

    async def _run_inline(
        self, job_id: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Run a plain callable here and now, tracked as a job (see ``_engine/inline.py``)."""
        await self.aw.open()
        await self.aw.local_runs.inline.run(
            job_id,
            func,
            args,
            kwargs,
            name=_describe(func),
            is_async=_is_async_callable(func),
            returns=False,
        )

    async def finish_request(self) -> None:
        """Once the request is over: record every task that will never run as cancelled.

        A route that returns a ``Response`` with a ``background`` of its own replaces the
        request's background tasks, so the tasks added here never run; their ids must
        still exist (``aw.get_job(id)``): each is recorded as cancelled, with the reason,
        and the request logs it once.
        """
        self._over = True
        leftovers: list[_Plain | NewJob] = [*self._pending.values(), *self._new]
        self._pending, self._new = {}, []
        if not leftovers:
            return
        if self._background_ran:
            reason = (
                "never ran: added after the request's background tasks had run (from a "
                "dependency's teardown?); add it in the route or before the yield"
            )
        else:
            reason = (
                "never ran: the route returned a Response with a background of its own, "
                "which replaces the request's background tasks (add these to that "
                "background, or return the content instead of a Response)"
            )
        logger.warning(
            "%d task(s) added with jobs.add_task will never run (%s); recorded as cancelled: %s",
            len(leftovers),
            ", ".join(_name(entry) for entry in leftovers),
            reason,
            extra={"action": "add_task_never_run", "jobs": [entry.id for entry in leftovers]},
        )
        inline = self.aw.local_runs.inline
        await self.aw.open()
        for entry in leftovers:
            try:
                if isinstance(entry, _Plain):
                    await inline.record_never_run(
                        inline.plain_job(entry.id, _describe(entry.func), entry.args, entry.kwargs),
                        reason,
                    )
                else:
                    await inline.record_never_run(entry, reason)
            except Exception:
                logger.exception("could not record job %s as cancelled", entry.id)


def _name(entry: _Plain | NewJob) -> str:
    return _describe(entry.func) if isinstance(entry, _Plain) else entry.task


def _stacks(request: Request) -> tuple[contextlib.AsyncExitStack, contextlib.AsyncExitStack]:
    """FastAPI's exit stacks of this request: the request's own (closed after the response
    and its background tasks) and the route function's (closed before the response)."""
    scope = request.scope
    inner, function = scope.get("fastapi_inner_astack"), scope.get("fastapi_function_astack")
    if not isinstance(inner, contextlib.AsyncExitStack) or not isinstance(
        function, contextlib.AsyncExitStack
    ):
        raise RuntimeError(
            "Jobs is a FastAPI dependency: use it in a route's parameters (FastAPI >= 0.121.2)"
        )
    return inner, function


async def _jobs_dependency(request: Request, background: BackgroundTasks) -> JobsManager:
    """The request's ``JobsManager``, with its two ends on FastAPI's exit stacks.

    A plain function rather than two generator dependencies (one per scope): FastAPI
    enters each generator as a context manager with a cancel scope of its own, which cost
    more than the rest of a request with a plain callable (docs/benchmarks.md, issue 18).
    The ends run as the generators' would: when the route returned, before the response
    (``store``: a failure to store is the request's own error); when the request is over,
    after its background tasks (``finish_request``). Both are shielded from a cancelled
    request, as FastAPI shields the teardowns of generator dependencies.
    """
    inner, function = _stacks(request)
    manager = JobsManager(get_afterwork(request), background)
    manager._managed = True

    async def route_returned(
        exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        if exc_type is not None:
            # A route that raised stores nothing and runs nothing: no id left the request.
            manager._pending.clear()
            manager._new.clear()
            return False
        inner.push_async_callback(_request_over, manager)
        if manager._new:  # registered tasks' jobs, stored before the response
            with anyio.CancelScope(shield=True):
                await manager.store()
        manager._mark_when_background_ran()
        return False

    function.push_async_exit(route_returned)
    return manager


async def _request_over(manager: JobsManager) -> None:
    # Request scope: runs once the response and its background tasks are done.
    if not manager._pending and not manager._new:  # every task ran (the common case)
        manager._over = True
        return
    with anyio.CancelScope(shield=True):
        await manager.finish_request()


#: Use as a route parameter: ``async def route(jobs: Jobs): jobs.add_task(...)``.
Jobs = Annotated[JobsManager, Depends(_jobs_dependency, scope="function")]
