"""Middleware: one typed seam around every enqueue and every attempt.

A middleware is a callable ``(call, call_next)``. ``call`` is a :class:`JobCall` that says
what is happening (``"enqueue"`` or ``"attempt"``), to which job, in which worker;
``call_next()`` runs the rest of the chain (the next middleware, then the enqueue or the
attempt itself) and returns the stored :class:`~afterwork.Job` (for an attempt: the job
as its outcome was recorded, or ``None`` when the lease was lost and nothing was written).

An ``async def`` middleware awaits ``call_next()``. A plain ``def`` middleware runs in a
worker thread, like a sync task, and its ``call_next()`` blocks that thread while the event
loop runs the rest; it never blocks the loop. The models are procrastinate's task
middleware, saq's ``before_process``/``after_process`` and trio's ``Instrument``.

What holds even on failure:

- A middleware that raises before the attempt ran fails the attempt with its error (retried
  by the task's policy, like an error of the job). One that raises after ``call_next()``
  returned is logged once; the job's recorded outcome stands.
- A middleware that raises around an enqueue makes the enqueue raise: the caller sees it.
- Cancellation (worker shutdown, a cancelled job) propagates through every middleware.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import FunctionType
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, cast

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from .backends.base import NewJob
    from .job import Job

__all__ = ("AsyncMiddleware", "JobCall", "Middleware", "SyncMiddleware", "run_through")


@dataclass(frozen=True, slots=True)
class JobCall:
    """What a middleware is called around.

    Attributes:
        kind: ``"enqueue"`` (a job is about to be stored) or ``"attempt"`` (a claimed job
            is about to run once).
        task: the task's name.
        queue: the job's queue.
        job_id: the job's id (known before an enqueue too).
        new_job: for an enqueue, the validated job about to be stored; else ``None``.
        job: for an attempt, the claimed job (``status`` running, ``attempts`` counting
            this one); else ``None``.
        worker: for an attempt, the id of the worker running it; else ``None``.

    .. versionadded:: 0.2
    """

    kind: Literal["enqueue", "attempt"]
    task: str
    queue: str
    job_id: str
    new_job: NewJob | None = None
    job: Job | None = None
    worker: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The job's headers: small string metadata stored with it and read back by every
        attempt (:attr:`Job.headers <afterwork.job.Job.headers>`).

        Around an enqueue, the dict is the one about to be stored: a middleware adds to it
        *before* ``call_next()`` (the trace context, a request id, a Sentry trace header)
        and the store keeps what it holds then, checked by
        :func:`~afterwork.job.check_headers` (string keys and values, at most 64 entries
        and 8 KiB, else the enqueue raises :class:`~afterwork.EnqueueError`). Around an
        attempt, it is what the enqueue stored (change it and nothing is written).

        .. versionadded:: 0.2
        """
        if self.new_job is not None:
            return self.new_job.headers
        if self.job is not None:
            return self.job.headers
        return {}

    @property
    def attempt(self) -> int:
        """The attempt's number (1 for the first); 0 for an enqueue."""
        return self.job.attempts if self.job is not None else 0


class AsyncMiddleware(Protocol):
    """An ``async def`` middleware: ``await call_next()`` runs the rest of the chain.

    Example:
        ```python
        async def timing(call: JobCall, call_next: Callable[[], Awaitable[Job | None]]):
            started = time.perf_counter()
            try:
                return await call_next()
            finally:
                print(call.kind, call.task, time.perf_counter() - started)
        ```
    """

    def __call__(
        self, call: JobCall, call_next: Callable[[], Awaitable[Job | None]], /
    ) -> Awaitable[Job | None]: ...


class SyncMiddleware(Protocol):
    """A plain ``def`` middleware, run in a worker thread: ``call_next()`` blocks it."""

    def __call__(self, call: JobCall, call_next: Callable[[], Job | None], /) -> Job | None: ...


#: A middleware, async or sync (see :class:`AsyncMiddleware` and :class:`SyncMiddleware`).
Middleware: TypeAlias = AsyncMiddleware | SyncMiddleware


#: Whether the instances of a class whose ``__call__`` is written in Python are awaited
#: (asked once per class, not on every job).
_CLASS_IS_ASYNC: dict[type, bool] = {}


def is_async(middleware: Middleware) -> bool:
    """Whether ``middleware`` is awaited (an ``async def``, or an object whose ``__call__`` is)."""
    kind = type(middleware)
    if kind is FunctionType:  # the common case, read from the code's flags
        if middleware.__code__.co_flags & inspect.CO_COROUTINE:  # type: ignore[union-attr]
            return True
        return inspect.iscoroutinefunction(middleware)
    cached = _CLASS_IS_ASYNC.get(kind)
    if cached is not None:
        return cached
    if inspect.iscoroutinefunction(middleware):
        return True
    call = getattr(middleware, "__call__", None)  # noqa: B004 (an object's async __call__)
    found = call is not None and inspect.iscoroutinefunction(call)
    if isinstance(kind.__dict__.get("__call__"), FunctionType):  # the class's own __call__
        _CLASS_IS_ASYNC[kind] = found
    return found


async def run_through(
    chain: Sequence[Middleware],
    call: JobCall,
    last: Callable[[], Awaitable[Job | None]],
) -> Job | None:
    """Run ``last`` inside every middleware of ``chain``, the first outermost."""
    if not chain:
        return await last()
    return await _step(chain, 0, call, last)


def _step(
    chain: Sequence[Middleware],
    index: int,
    call: JobCall,
    last: Callable[[], Awaitable[Job | None]],
) -> Awaitable[Job | None]:
    """``chain[index]`` called around the rest (the innermost one gets ``last`` itself).

    A plain function returning the middleware's own awaitable, not a coroutine of its
    own: one coroutine frame less per middleware and attempt (what the chain costs is on
    every job's path; docs/benchmarks.md, "What metrics and history cost").
    """
    middleware = chain[index]
    if index + 1 == len(chain):
        call_next = last
    else:
        call_next = functools.partial(_step, chain, index + 1, call, last)
    if is_async(middleware):
        awaited: AsyncMiddleware = middleware  # type: ignore[assignment]
        return awaited(call, call_next)
    return _in_thread(cast("SyncMiddleware", middleware), call, call_next)


async def _in_thread(
    sync: SyncMiddleware, call: JobCall, call_next: Callable[[], Awaitable[Job | None]]
) -> Job | None:
    """A plain ``def`` middleware, run in a worker thread; its ``call_next()`` blocks it."""
    from anyio import from_thread  # only with a plain ``def`` middleware: not in every worker

    async def next_step() -> Job | None:
        return await call_next()

    def blocking_next() -> Job | None:
        return from_thread.run(next_step)

    return await anyio.to_thread.run_sync(sync, call, blocking_next)
