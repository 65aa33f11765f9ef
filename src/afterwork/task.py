"""Tasks: a function registered with an :class:`~afterwork.Afterwork` instance."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, ParamSpec, Protocol, TypedDict, TypeVar, Unpack

from ._signature import ArgumentCodec
from .exceptions import EnqueueError
from .job import Job
from .retry import Backoff, ExponentialBackoff

__all__ = ("EnqueueOptions", "Task", "TaskCall", "TaskOptions", "TaskOwner")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class TaskOwner(Protocol):
    """What a :class:`Task` enqueues through (an :class:`~afterwork.Afterwork`).

    Tasks name this protocol, not the facade, so that the engine can use tasks without
    depending on ``afterwork.app``.
    """

    async def enqueue_task(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Job: ...

    def run_sync(self, func: Callable[[], Awaitable[T]]) -> T: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """A task's policy, set with ``@aw.task(...)``."""

    queue: str = "default"
    priority: int = 0
    retries: int = 0
    backoff: Backoff = field(default_factory=ExponentialBackoff)
    timeout: float | None = None
    concurrency: int | None = None
    """At most this many jobs of the task run at once in one worker process."""
    result_ttl: float | None = 86_400.0
    dont_retry: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.result_ttl is not None and self.result_ttl < 0:
            raise ValueError("result_ttl must not be negative")
        if not self.queue or self.queue.startswith("_"):
            raise ValueError(
                f"queue names must be non-empty and not start with '_': {self.queue!r}"
            )


class EnqueueOptions(TypedDict, total=False):
    """Options of one enqueue: ``task.options(**options).enqueue(...)``."""

    delay: float
    """Seconds to wait before the job is due."""
    key: str
    """Dedupe key: while an unfinished job holds it, enqueue returns that job."""
    priority: int
    """Higher runs first."""
    queue: str


def _check_options(options: Mapping[str, Any]) -> None:
    unknown = set(options) - set(EnqueueOptions.__annotations__)
    if unknown:
        raise EnqueueError(f"unknown enqueue options: {', '.join(sorted(unknown))}")
    delay = options.get("delay", 0.0)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        raise EnqueueError(f"delay must be a non-negative number of seconds, not {delay!r}")
    key = options.get("key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 512):
        raise EnqueueError("key must be a non-empty string of at most 512 characters")
    priority = options.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise EnqueueError(f"priority must be an integer, not {priority!r}")
    queue = options.get("queue", "default")
    if not isinstance(queue, str) or not queue or queue.startswith("_") or len(queue) > 200:
        raise EnqueueError(f"queue must be a name of 1 to 200 characters, not {queue!r}")


class Task(Generic[P, R]):
    """A function registered with ``@aw.task``. Calling it calls the function directly.

    Example:
        ```python
        @aw.task(retries=3)
        async def send_email(to: str, subject: str) -> None: ...

        job = await send_email.enqueue("ada@example.com", "Welcome")
        job = await send_email.options(delay=60, key="welcome:ada").enqueue(
            "ada@example.com", "Welcome"
        )
        ```
    """

    def __init__(
        self, owner: TaskOwner, func: Callable[P, R], *, name: str, options: TaskOptions
    ) -> None:
        self.owner: TaskOwner = owner
        self.func = func
        self.name = name
        self.opts = options
        self.is_async: bool = inspect.iscoroutinefunction(func)
        self.codec: ArgumentCodec = ArgumentCodec(func, name)
        functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.opts.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def options(self, **options: Unpack[EnqueueOptions]) -> TaskCall:
        """Options for one enqueue: ``delay``, ``key``, ``priority``, ``queue``."""
        _check_options(options)
        return TaskCall(self, dict(options))

    async def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        """Validate the arguments and store a job; return it.

        Raises:
            EnqueueError: an argument does not fit the signature; nothing was stored.
        """
        return await self.owner.enqueue_task(self, args, kwargs, {})

    def enqueue_sync(self, *args: Any, **kwargs: Any) -> Job:
        """:meth:`enqueue` from sync code: a script, a ``def`` route, any other thread.

        Never call it on the event loop's thread: ``await task.enqueue(...)`` there.
        """
        return self.owner.run_sync(functools.partial(self.enqueue, *args, **kwargs))


class TaskCall:
    """A task with options for one enqueue (see :meth:`Task.options`)."""

    __slots__ = ("_options", "task")

    def __init__(self, task: Task[Any, Any], options: dict[str, Any]) -> None:
        self.task: Task[Any, Any] = task
        self._options = options

    def __repr__(self) -> str:
        return f"<TaskCall {self.task.name} {self._options}>"

    def options(self, **options: Unpack[EnqueueOptions]) -> TaskCall:
        _check_options(options)
        return TaskCall(self.task, {**self._options, **options})

    async def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        return await self.task.owner.enqueue_task(self.task, args, kwargs, self._options)

    def enqueue_sync(self, *args: Any, **kwargs: Any) -> Job:
        return self.task.owner.run_sync(functools.partial(self.enqueue, *args, **kwargs))


def with_options(options: TaskOptions, **changes: Any) -> TaskOptions:
    return replace(options, **changes)
