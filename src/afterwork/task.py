"""Tasks: a function registered with an :class:`~afterwork.Afterwork` instance."""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, ParamSpec, Protocol, TypedDict, TypeVar, Unpack

from ._lifecycle import RateLimit
from ._signature import ArgumentCodec
from .exceptions import EnqueueError
from .job import Job
from .retry import Backoff, ExponentialBackoff

__all__ = (
    "MAX_DELAY",
    "MAX_KEY",
    "MAX_QUEUE",
    "MAX_TASK_NAME",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "EnqueueOptions",
    "Task",
    "TaskCall",
    "TaskOptions",
    "TaskOwner",
)

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
        *,
        connection: Any = None,
    ) -> Job: ...

    def run_sync(self, func: Callable[[], Awaitable[T]]) -> T: ...


# The limits of what a job may carry, checked here once, above the stores, so that every
# store holds the same jobs or refuses the same input (docs/concepts.md, "Limits").
#: Priorities run from ``PRIORITY_MIN`` to ``PRIORITY_MAX``: the range Redis orders exactly
#: (its ready-queue score, ``-priority * 2**42 + due time in ms``, stays an exact double).
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
#: The longest ``delay``: ten years, in seconds.
MAX_DELAY = 10 * 365 * 86_400.0
MAX_KEY = 512
MAX_QUEUE = 200
MAX_TASK_NAME = 500

# Lone surrogates cannot be encoded as UTF-8 (SQLite and Redis store UTF-8); control
# characters (NUL, escapes, newlines) would reach terminals and logs as they are.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: object, max_length: int) -> str | None:
    """Why ``value`` cannot be a key, queue or task name, or ``None`` if it can."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters long"
    bad = _UNSAFE_TEXT.search(value)
    if bad is not None:
        char = bad.group()
        kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        return f"must not contain {kind} ({ascii(char)} at index {bad.start()})"
    return None


def priority_problem(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"must be an integer, not {type(value).__name__}"
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        return f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}, not {value}"
    return None


def queue_problem(value: object) -> str | None:
    problem = text_problem(value, MAX_QUEUE)
    if problem is None and isinstance(value, str) and value.startswith("_"):
        return "must not start with '_' (reserved)"
    return problem


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """A task's policy, set with ``@aw.task(...)``."""

    queue: str = "default"
    priority: int = 0
    retries: int = 0
    backoff: Backoff = field(default_factory=ExponentialBackoff)
    timeout: float | None = None
    concurrency: int | None = None
    """At most this many jobs of the task run at once across every process sharing the
    store (per value of ``concurrency_key`` when it is set)."""
    concurrency_key: str | None = None
    """The name of a task argument: ``concurrency`` then caps each value of it."""
    local_concurrency: int | None = None
    """At most this many jobs of the task run at once in one worker process."""
    rate_limit: RateLimit | None = None
    """At most ``limit`` starts per ``per`` seconds across the fleet (per key value)."""
    debounce: float | None = None
    """Seconds of quiet after the last enqueue with a ``key=`` before the job runs."""
    result_ttl: float | None = 86_400.0
    dont_retry: tuple[type[BaseException], ...] = ()
    isolation: str | None = None
    """``"process"``: each attempt runs in a child process (``None``: the worker's default)."""
    max_memory_mb: int | None = None
    """An isolated attempt's child is killed past this resident memory (``None``: the
    worker's default)."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.local_concurrency is not None and self.local_concurrency < 1:
            raise ValueError("local_concurrency must be at least 1")
        if self.concurrency_key is not None and self.concurrency is None:
            raise ValueError("concurrency_key needs concurrency (the cap per key value)")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ValueError(
                f"rate_limit must be a RateLimit(n, per=seconds), not {self.rate_limit!r}"
            )
        if self.debounce is not None and (
            isinstance(self.debounce, bool)
            or not isinstance(self.debounce, int | float)
            or not math.isfinite(self.debounce)
            or self.debounce <= 0
        ):
            raise ValueError(
                f"debounce must be a positive number of seconds, not {self.debounce!r}"
            )
        if self.result_ttl is not None and self.result_ttl < 0:
            raise ValueError("result_ttl must not be negative")
        if self.isolation not in (None, "none", "process"):
            raise ValueError(f"isolation must be 'process' or 'none', not {self.isolation!r}")
        if self.max_memory_mb is not None and self.max_memory_mb < 1:
            raise ValueError("max_memory_mb must be at least 1")
        problem = queue_problem(self.queue)
        if problem is not None:
            raise ValueError(f"queue {problem}: {self.queue!r}")
        problem = priority_problem(self.priority)
        if problem is not None:
            raise ValueError(f"priority {problem}")


class EnqueueOptions(TypedDict, total=False):
    """Options of one enqueue: ``task.options(**options).enqueue(...)``."""

    delay: float
    """Seconds to wait before the job is due."""
    key: str
    """Dedupe key: while an unfinished job holds it, enqueue returns that job."""
    priority: int
    """Higher runs first; from ``PRIORITY_MIN`` (-1000) to ``PRIORITY_MAX`` (1000)."""
    queue: str
    connection: Any
    """The app's open database session or connection (a SQLAlchemy ``AsyncSession`` or
    ``AsyncConnection`` the store accepts): the job is written inside its transaction and
    exists only if it commits (``docs/transactions.md``). ``None``: a plain enqueue.

    .. versionadded:: 0.3
    """


#: Options of the enqueue call itself, not of the job: never stored, never validated here.
CALL_OPTIONS = frozenset({"connection"})


def _delay_problem(value: object) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"must be a number of seconds, not {type(value).__name__}"
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        return f"must be at most {MAX_DELAY:.0f} seconds (ten years)"
    if math.isnan(seconds):
        return "must be a number of seconds, not NaN"
    if seconds < 0:
        return f"must not be negative, not {seconds!r}"
    if seconds > MAX_DELAY:
        return f"must be at most {MAX_DELAY:.0f} seconds (ten years), not {seconds!r}"
    return None


def check_options(options: Mapping[str, Any], *, job_only: bool = False) -> None:
    """Raise :class:`EnqueueError`, naming the field, for an option no store can hold.

    ``job_only``: ``options`` describe a job (:meth:`Afterwork.build_job`), so an option of
    the enqueue call (``connection``) is refused too.
    """
    unknown = set(options) - set(EnqueueOptions.__annotations__)
    if unknown:
        raise EnqueueError(f"unknown enqueue options: {', '.join(sorted(unknown))}")
    if job_only and CALL_OPTIONS & set(options):
        raise EnqueueError(
            "connection is not an option of the job: pass it to the enqueue "
            "(task.options(connection=...).enqueue(...), aw.enqueue_many(jobs, connection=...))",
            field="connection",
        )
    problems: list[tuple[str, str | None]] = []
    if "delay" in options:
        problems.append(("delay", _delay_problem(options["delay"])))
    if options.get("key") is not None:
        problems.append(("key", text_problem(options["key"], MAX_KEY)))
    if "priority" in options:
        problems.append(("priority", priority_problem(options["priority"])))
    if "queue" in options:
        problems.append(("queue", queue_problem(options["queue"])))
    for field_name, problem in problems:
        if problem is not None:
            raise EnqueueError(f"{field_name} {problem}", field=field_name)


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
        """Options for one enqueue: ``delay``, ``key``, ``priority``, ``queue``, and
        ``connection`` (enqueue inside the app's own transaction, ``docs/transactions.md``).
        """
        check_options(options)
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
        shown = {k: v for k, v in self._options.items() if k not in CALL_OPTIONS}
        if self._options.get("connection") is not None:
            shown["connection"] = type(self._options["connection"]).__name__
        return f"<TaskCall {self.task.name} {shown}>"

    def options(self, **options: Unpack[EnqueueOptions]) -> TaskCall:
        check_options(options)
        return TaskCall(self.task, {**self._options, **options})

    async def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        """Validate the arguments and store a job with these options; return it.

        With ``connection=``, the job is written inside that connection's transaction.

        Raises:
            EnqueueError: an argument or option is rejected, or the store cannot enqueue
                through ``connection``; nothing was stored.
        """
        job_options = {k: v for k, v in self._options.items() if k not in CALL_OPTIONS}
        return await self.task.owner.enqueue_task(
            self.task, args, kwargs, job_options, connection=self._options.get("connection")
        )

    def enqueue_sync(self, *args: Any, **kwargs: Any) -> Job:
        if self._options.get("connection") is not None:
            raise TypeError(
                "a connection= enqueue runs on the connection's event loop: "
                "await task.options(connection=...).enqueue(...) there"
            )
        return self.task.owner.run_sync(functools.partial(self.enqueue, *args, **kwargs))


def with_options(options: TaskOptions, **changes: Any) -> TaskOptions:
    return replace(options, **changes)
