"""``Afterwork``: configuration, the task registry, client calls and the lifespan.

The rest of the facade is mixins, in modules of their own: ``_app_schedules.py``
(schedules and services), ``_app_jobs.py`` (reading, waiting on and watching stored jobs),
``_app_runtime.py`` (worker, drain, runtime) and ``_app_flow.py`` (paused queues, bulk
retry and cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, Unpack, cast, overload

import anyio

from . import _bridge, _signature
from ._app_flow import FlowControl
from ._app_jobs import JobCalls
from ._app_runtime import ProcessRuntime
from ._app_schedules import SchedulesAndServices
from ._clock import EngineClock, engine_clock
from ._engine import dependencies
from ._engine.local import LocalRuns
from ._engine.scheduler import Scheduler
from ._engine.services import ServiceInstance, ServiceSupervisor
from ._flow import check_flow_key, flow_keys, keyed
from ._lifecycle import RateLimit, make_new_job
from ._location import store_location
from ._middleware import JobCall, Middleware, run_through
from ._records import maker
from ._settings import Settings
from ._signature import encode_payload
from ._task_names import MAIN_PREFIX, default_task_name, main_task_problem, unknown_task_message
from ._transactional import enqueue_through
from .backends import from_url
from .backends.base import Channels, Clock, MessageStream, NewJob, Store
from .context import JobContext
from .exceptions import BackendUnavailable, ConfigurationError, EnqueueError, EnqueueUnconfirmed
from .job import Job, check_headers, new_job_id
from .retry import Backoff, ExponentialBackoff
from .task import MAX_TASK_NAME, Task, TaskOptions, check_options, text_problem

if TYPE_CHECKING:
    from fastapi import APIRouter

    from ._pubsub import Subscription
    from .fastapi._options import AuthDependency, RouterOptions

__all__ = ("Afterwork", "ServiceContext", "ServiceInstance", "Settings")

logger: logging.Logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
M = TypeVar("M", bound=Middleware)

DEFAULT_URL = "sqlite:///./afterwork.db"

#: What ``build_job`` puts in every job of a task enqueued without options (see
#: ``Afterwork._plan_of``): the task's options, name and codec (the plan holds while they
#: are the task's), then its queue, priority, max_attempts, timeout and result_ttl.
_JobPlan = tuple[
    TaskOptions, str, _signature.ArgumentCodec, str, int, int, float | None, float | None
]
#: ``NewJob`` of such a task's job, by position (no key, no delay, no headers).
_make_planned: Callable[..., NewJob] = maker(
    NewJob,
    ("id", "task", "queue", "args", "kwargs", "priority", "max_attempts", "timeout", "result_ttl"),
)


class Afterwork(SchedulesAndServices, ProcessRuntime, JobCalls, FlowControl):
    """Background work for a FastAPI app: tasks, a store, workers.

    Args:
        url: where jobs are stored: ``sqlite:///./afterwork.db`` (the default),
            ``memory://`` or ``redis://host:6379/0`` (``postgresql://`` is not supported
            yet). ``None`` reads the ``AFTERWORK_URL`` environment variable, then falls
            back to the default.
        backend: a backend object to use instead of ``url``.
        clock: seconds since the epoch; tests inject :class:`afterwork.testing.FakeClock`,
            which the engine's loops (heartbeats, reaper, claim backoff, scheduler,
            service restart backoff) then also sleep on. A bare ``() -> float`` only sets
            the store's time; the loops wait in real time.
        seed: seeds the random source of backoff jitter (for reproducible tests).
        middleware: callables run around every enqueue and every attempt, the first
            outermost (see :meth:`middleware`).
        eager: run registered tasks inline, for tests (``docs/testing.md``): ``enqueue``
            runs the job before it returns, ``jobs.add_task`` after the response; the
            arguments are still validated and JSON round-tripped. Also an attribute
            (``aw.eager = True`` in a test's setup).
        **settings: any field of :class:`Settings`.

    Example:
        ```python
        aw = Afterwork("sqlite:///./afterwork.db")

        @aw.task(retries=3)
        async def send_email(to: str) -> None: ...

        app = FastAPI(lifespan=aw.lifespan)
        ```
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        backend: Store | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        middleware: Iterable[Middleware] = (),
        eager: bool = False,
        **settings: Any,
    ) -> None:
        unknown = set(settings) - set(Settings.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(f"unknown Afterwork options: {', '.join(sorted(unknown))}")
        self.config: Settings = Settings(**settings)
        if backend is not None and url is not None:
            raise ConfigurationError("pass a url or a backend, not both")
        self.url: str = url or os.environ.get("AFTERWORK_URL") or DEFAULT_URL
        self.backend: Store = backend if backend is not None else from_url(self.url, clock=clock)
        if backend is None and hasattr(self.backend, "job_owner"):
            cast("Any", self.backend).job_owner = self  # it returns new jobs as ``_told`` would
        self.clock: EngineClock = engine_clock(clock)
        """What the engine's loops wait on (real time unless ``clock`` can sleep)."""
        self.rng: random.Random = random.Random(seed)
        self.eager: bool = eager
        """Registered tasks run inline (tests); see the ``eager`` argument."""
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._middleware: list[Middleware] = list(middleware)
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []  # e.g. History.close
        #: Per task whose jobs need no per-call checks beyond its arguments: what
        #: ``build_job`` copies into each of them (see ``_plan_of``).
        self._job_plans: dict[Task[Any, Any], _JobPlan] = {}
        self._local_runs = LocalRuns(self)
        self._open = False
        self._reconnecting = False
        self._open_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._portal: _bridge.Portal | None = None
        self._app: Any = None  # the app served through ``lifespan``: its dependency_overrides
        self.scheduler: Scheduler = Scheduler(self)
        self.supervisor: ServiceSupervisor = ServiceSupervisor(self, self._service_context)

    def __repr__(self) -> str:
        return f"Afterwork({self.url!r}, tasks={len(self.tasks)})"

    # -- registering tasks ---------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retries: int = 0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        local_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        debounce: float | None = None,
        result_ttl: float | None = 86_400.0,
        dont_retry: Iterable[type[BaseException]] = (),
        isolation: Literal["process", "none"] | None = None,
        max_memory_mb: int | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retries: int = 0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        local_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        debounce: float | None = None,
        result_ttl: float | None = 86_400.0,
        dont_retry: Iterable[type[BaseException]] = (),
        isolation: Literal["process", "none"] | None = None,
        max_memory_mb: int | None = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task (bare ``@aw.task`` or ``@aw.task(...)``).

        Args:
            name: the name jobs refer to; default ``module:qualname``.
            queue: the queue its jobs go to.
            priority: higher runs first.
            retries: how many times a failed attempt is retried.
            backoff: delay between retries; default ``Retry.exponential()``.
            timeout: seconds an attempt may run before it is cancelled and counted failed.
            concurrency: most jobs of this task running at once across every process
                sharing the store (the store enforces it when it hands out jobs).
            concurrency_key: the name of an argument: the ``concurrency`` cap then holds
                per value of it (a JSON scalar).
            local_concurrency: most jobs of this task running at once in one worker process.
            rate_limit: ``RateLimit(n, per=seconds, key=None)``: at most ``n`` starts per
                window across every process sharing the store (per value of the ``key``
                argument); work over the limit waits queued (docs/flow-control.md).
            debounce: seconds: an enqueue with ``key=`` replaces the arguments of the job
                still waiting with that key and pushes it back; it runs once the key has
                been quiet that long.
            result_ttl: seconds a finished job and its result are kept (``None``: forever).
            dont_retry: exception types that fail the job at once.
            isolation: ``"process"`` runs each attempt in a child process of a reused pool:
                a crash, a hard timeout or a memory cap ends that child, never the worker
                (docs/isolation.md). ``None``: the worker's default (``--isolation``).
            max_memory_mb: with process isolation, the child is killed past this resident
                memory and the attempt fails with ``afterwork.MemoryLimitExceeded``.
        """
        options = TaskOptions(
            queue=queue,
            priority=priority,
            retries=retries,
            backoff=backoff if backoff is not None else ExponentialBackoff(),
            timeout=timeout,
            concurrency=concurrency,
            concurrency_key=concurrency_key,
            local_concurrency=local_concurrency,
            rate_limit=rate_limit,
            debounce=debounce,
            result_ttl=result_ttl,
            dont_retry=tuple(dont_retry),
            isolation=isolation,
            max_memory_mb=max_memory_mb,
        )

        def decorate(fn: Callable[P, R]) -> Task[P, R]:
            return self.register(fn, name=name, options=options)

        return decorate if func is None else decorate(func)

    def register(
        self, func: Callable[P, R], *, name: str | None = None, options: TaskOptions | None = None
    ) -> Task[P, R]:
        """Register ``func`` as a task (what ``@aw.task`` does)."""
        if isinstance(func, Task):
            raise TypeError(f"{func!r} is already a task")
        if not callable(func):
            raise TypeError(f"a task must be a function, not {type(func).__name__}")
        # A function of a script run as __main__ is named after the module a worker imports.
        task_name = name or default_task_name(func)
        problem = text_problem(task_name, MAX_TASK_NAME)
        if problem is not None:
            raise ValueError(f"a task name {problem}: {task_name!r}")
        if task_name in self.tasks:
            raise ValueError(f"a task named {task_name!r} is already registered")
        task = Task(self, func, name=task_name, options=options or TaskOptions())
        check_flow_key(task)
        if any(injected.kind == "service_context" for injected in task.codec.injected):
            raise TypeError(f"{task_name}: only services take a ServiceContext; use JobContext")
        self.tasks[task_name] = task
        return task

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``."""
        from .exceptions import TaskNotFound

        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotFound(unknown_task_message(name, self.tasks)) from None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        """Connect to the store. Idempotent; every client call opens on first use."""
        if self._open:
            if self._loop is None or not self._loop.is_closed():
                return
            # Opened lazily on a loop that has ended since (a ``TestClient`` used without
            # ``with`` runs each request on a loop of its own): reconnect on this one.
            await self._reconnect()
            return
        loop = asyncio.get_running_loop()
        if self._portal is not None and loop is not self._portal.loop:
            # Opened earlier for sync callers; move to the app's loop.
            portal, self._portal = self._portal, None
            with contextlib.suppress(Exception):
                portal.call(self.backend.aclose(), timeout=5)
            portal.close()
        await self.backend.open()
        self._loop = loop
        self._open = True
        if self._reconnecting:
            return  # said once already, when first opened
        logger.info(
            "afterwork store: %s",
            self.location,
            extra={"action": "store_opened", "store": self.location},
        )

    async def aclose(self) -> None:
        """Stop local workers and disconnect from the store."""
        self._local_runs.stop_workers()
        if self._open:
            with contextlib.suppress(Exception):  # logged by the write-behind
                await self._local_runs.flush()
            for hook in self._close_hooks:
                try:
                    await hook()
                except Exception:
                    logger.warning("a close hook failed", exc_info=True)
            self._open = False
            self._loop = None
            await self.backend.aclose()

    async def __aenter__(self) -> Afterwork:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _reconnect(self) -> None:
        self._open = False
        with contextlib.suppress(Exception):
            await self.backend.aclose()
        self._reconnecting = True
        try:
            await self.open()
        finally:
            self._reconnecting = False

    async def _ensure_open(self) -> None:
        await self.open()

    def attach(self, app: Any) -> None:
        """Make ``app`` use this instance without ``aw.lifespan`` (``Jobs`` finds it).

        For apps whose lifespan does not enter ``aw.lifespan`` (a lifespan of your own,
        a mounted sub-application, a test that never runs the lifespan). The store opens
        on first use; no worker runs unless you start one. See ``docs/fastapi.md``.
        """
        state = getattr(app, "state", None)
        if state is None:
            raise TypeError(f"{type(app).__name__} is not a Starlette/FastAPI app")
        state.afterwork = self
        _remember_router(app, self)
        if self._app is None:
            self._app = app

    # -- sync bridging -------------------------------------------------------------------

    def run_sync(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` on the right event loop from sync code and return its result.

        * called from another thread while the app runs: on the app's loop;
        * called with no loop at all (a script): on a private loop in a daemon thread;
        * called on a thread whose event loop is running: a ``RuntimeError``, since
          blocking there would freeze the loop; ``await`` the async version instead.
        """
        return _bridge.run_sync(self, func)

    # -- middleware ----------------------------------------------------------------------

    def middleware(self, func: M, /) -> M:
        """Run ``func`` around every enqueue and every attempt (after those added before).

        ``func(call, call_next)`` receives a :class:`~afterwork.JobCall` and ``call_next``,
        which runs the rest and returns the stored :class:`~afterwork.Job` (for an attempt,
        as its outcome was recorded; ``None`` if the lease was lost). An ``async def`` awaits
        ``call_next()``; a plain ``def`` runs in a worker thread and calls it. Returns
        ``func``, so it works as a decorator.

        Example:
            ```python
            @aw.middleware
            async def log_calls(call, call_next):
                job = await call_next()
                print(call.kind, call.task, job.status if job else "lost")
                return job
            ```

        .. versionadded:: 0.2
        """
        if not callable(func):
            raise TypeError(f"a middleware must be callable, not {func!r}")
        self._middleware.append(func)
        return func

    @property
    def middleware_chain(self) -> Sequence[Middleware]:
        """The middleware added so far, the first outermost."""
        return self._middleware

    async def _store(self, new: NewJob, connection: Any = None) -> Job:
        """Store one new job inside the middleware chain (in ``connection``'s transaction)."""
        if not self._middleware:
            (job,) = await self._store_new([new], connection)
            return _told(job, new, self)

        async def store() -> Job:
            (job,) = await self._store_new([new], connection)
            return _told(job, new, self)

        call = JobCall("enqueue", new.task, new.queue, new.id, new_job=new)
        stored = await run_through(self._middleware, call, store)
        if stored is None:  # a middleware did not call call_next
            raise EnqueueError(f"a middleware returned without storing job {new.id}", task=new.task)
        return stored

    # -- client calls (stored jobs: _app_jobs.py) ----------------------------------------

    async def enqueue_task(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        connection: Any = None,
    ) -> Job:
        """Validate and store one job of ``task`` (what ``task.enqueue`` calls).

        With ``connection``, the job is written in that transaction (never run eagerly).
        """
        new = self.build_job(task, args, kwargs, options)
        await self._ensure_open()
        if self.eager and not new.delay and new.key is None and connection is None:
            return await self.run_eager(new)
        return await self._store(new, connection)

    async def run_eager(self, new: NewJob) -> Job:
        """Store ``new`` and run it here and now (eager mode); return the job after it."""
        await self._ensure_open()
        job = await self._local_runs.inline.run_task(new)
        if job is None:  # the lease was lost meanwhile: report the job as it is
            job = await self.backend.get(new.id)
            assert job is not None
        return job.bind(self)

    async def _store_new(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        """Enqueue ``jobs``; an unconfirmed write says whether they may exist.

        The stores retry a transient failure themselves, with the same ids (a job id is
        made before the write, and a store keeps one job per id), so a retry never makes a
        second job. With ``connection``, the jobs are written in the app's transaction,
        whose commit or rollback decides (``_transactional``).
        """
        for new in jobs:
            if new.headers:  # an enqueue middleware may have added to them
                check_headers(new.headers, task=new.task)
        if connection is not None:
            return await enqueue_through(self.backend, connection, jobs)
        try:
            return await self.backend.enqueue(jobs)
        except BackendUnavailable as exc:
            may_exist = exc.may_have_applied
            ids = ", ".join(job.id for job in jobs[:3]) + (", ..." if len(jobs) > 3 else "")
            raise EnqueueUnconfirmed(
                f"{exc}; the job(s) {ids} "
                + ("may have been stored" if may_exist else "were not stored")
                + ": retrying the same enqueue is safe",
                job_ids=tuple(job.id for job in jobs),
                may_exist=may_exist,
                may_have_applied=may_exist,
                jobs=tuple(jobs),
            ) from exc

    def build_job(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> NewJob:
        """A validated :class:`NewJob` for ``task`` (raises :class:`EnqueueError`)."""
        if not options and (plan := self._job_plans.get(task)) is not None:
            opts, name, codec, queue, priority, max_attempts, timeout, result_ttl = plan
            if opts is task.opts and name is task.name and codec is task.codec:
                # What the general path below does for such a task, without the checks
                # it passed once already (a batch's enqueue builds one job per call).
                json_args, json_kwargs = codec.encode(args, kwargs)
                if json_args or json_kwargs:
                    encode_payload([json_args, json_kwargs], self.config.max_payload, task=name)
                return _make_planned(
                    new_job_id(), name, queue, json_args, json_kwargs, priority, max_attempts,
                    timeout, result_ttl,
                )  # fmt: skip
        if task.owner is not self:
            raise EnqueueError(f"{task.name} is registered with another Afterwork instance")
        if options:
            check_options(options, job_only=True)
        if task.name.startswith(MAIN_PREFIX) and not self._runs_here():
            raise EnqueueError(main_task_problem(task.name), task=task.name)
        json_args, json_kwargs = task.codec.encode(args, kwargs)
        json_args, json_kwargs = keyed(task, json_args, json_kwargs)
        if json_args or json_kwargs or self.config.max_payload < len("[[],{}]"):
            encode_payload([json_args, json_kwargs], self.config.max_payload, task=task.name)
        opts = task.opts
        delay = float(options.get("delay", 0.0))
        if opts.debounce is not None:
            if options.get("key") is None:
                raise EnqueueError(
                    f"{task.name} is debounced: enqueue it with a key"
                    " (task.options(key=...).enqueue(...)), the burst it belongs to",
                    task=task.name,
                )
            delay = max(delay, opts.debounce)
        if not options:
            self._plan_of(task)
        return make_new_job(
            id=new_job_id(),
            task=task.name,
            queue=options.get("queue", opts.queue),
            args=json_args,
            kwargs=json_kwargs,
            priority=options.get("priority", opts.priority),
            max_attempts=opts.retries + 1,
            key=options.get("key"),
            delay=delay,
            timeout=opts.timeout,
            result_ttl=opts.result_ttl,
            debounce=opts.debounce is not None,
        )

    def _plan_of(self, task: Task[Any, Any]) -> None:
        """Remember what every job of ``task`` enqueued without options shares, if nothing
        but its arguments needs checking per call: a task of this instance, not of
        ``__main__`` (whether it may run depends on the moment), without a limit's key
        argument (moved among the arguments), not debounced (a key is required), and an
        empty call within ``max_payload``. Kept while the task keeps its options."""
        opts = task.opts
        if (
            task.owner is self
            and not task.name.startswith(MAIN_PREFIX)
            and not flow_keys(task)
            and opts.debounce is None
            and self.config.max_payload >= len("[[],{}]")
        ):
            self._job_plans[task] = (
                opts, task.name, task.codec, opts.queue, opts.priority, opts.retries + 1,
                opts.timeout, opts.result_ttl,
            )  # fmt: skip

    def _runs_here(self) -> bool:
        """Whether jobs enqueued now run in this process: a ``memory://`` store, or a worker
        of this instance (the lifespan's) is running. Only then can a ``__main__`` task run."""
        from .backends.memory import MemoryBackend

        return isinstance(self.backend, MemoryBackend) or self._local_runs.has_workers

    @property
    def location(self) -> str:
        """Where the store is: an absolute path for SQLite, the URL without password."""
        return store_location(self.backend, self.url)

    async def enqueue_many(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Job]:
        """Store several jobs in one round trip (build them with :meth:`build_job`).

        ``connection``: the app's open session or connection; the jobs are written inside
        its transaction and exist only if it commits (``docs/transactions.md``).
        """
        await self._ensure_open()
        if self._middleware:  # each job through the chain, one store call each
            return [await self._store(new, connection) for new in jobs]
        stored = await self._store_new(jobs, connection)
        return [_told(job, new, self) for job, new in zip(stored, jobs, strict=True)]

    async def publish(self, channel: str, data: Any) -> None:
        """Send ``data`` (JSON) to every subscriber of ``channel``, in every process that
        shares the store (memory: this process).

        At most once per subscriber, in the order this process published; it never waits
        for subscribers. See ``docs/fastapi.md`` (events across processes).

        Raises:
            EnqueueError: a bad channel name, or ``data`` is not JSON.
            PayloadTooLarge: the JSON is larger than ``max_payload``.
        """
        from ._pubsub import encode_message

        text = encode_message(channel, data, self.config.max_payload)
        await self._ensure_open()
        await self._channels().publish(channel, text)

    def subscribe(self, channel: str) -> Subscription:
        """The messages published on ``channel`` from now on, from every process.

        ``async for message in aw.subscribe("screen")``: each ``message.data`` is the
        published JSON, decoded; ``message.missed`` marks a gap (this subscriber fell
        behind, or reconnected). ``async with aw.subscribe(channel) as messages:`` is
        subscribed when the block starts.
        """
        from ._pubsub import MAX_CHANNEL, Subscription

        if not channel or len(channel) > MAX_CHANNEL:
            raise EnqueueError(f"a channel name must be 1 to {MAX_CHANNEL} characters")

        async def open_stream() -> MessageStream:
            await self._ensure_open()
            return await self._channels().subscribe(channel)

        return Subscription(channel, open_stream)

    def _channels(self) -> Channels:
        if not isinstance(self.backend, Channels):
            raise TypeError(f"{type(self.backend).__name__} does not support channels")
        return self.backend

    # -- running work (worker, drain, runtime: _app_runtime.py) --------------------------

    async def resolve_injected(
        self, task: Task[Any, Any], context: JobContext, stack: contextlib.AsyncExitStack
    ) -> dict[str, Any]:
        """Values for the parameters afterwork injects into ``task`` (context, dependencies)."""
        return await dependencies.inject_job(task, context, stack, self.dependency_overrides())

    def dependency_overrides(self) -> Mapping[Callable[..., Any], Callable[..., Any]]:
        """The ``dependency_overrides`` of the FastAPI app served through ``aw.lifespan``.

        They apply to the dependencies of jobs and services; empty when no app is served.
        """
        overrides = getattr(self._app, "dependency_overrides", None)
        return overrides if isinstance(overrides, Mapping) else {}

    @property
    def local_runs(self) -> LocalRuns:
        """The jobs this process runs: its workers and the runner of ``Jobs.add_task``."""
        return self._local_runs

    def _service_context(
        self, name: str, *, restarts: int, stop: anyio.Event, on_ready: Callable[[], None]
    ) -> ServiceContext:
        return ServiceContext(name, self, restarts=restarts, stop=stop, on_ready=on_ready)

    # -- FastAPI -------------------------------------------------------------------------

    def router(
        self,
        *,
        auth: AuthDependency | None = None,
        insecure_no_auth: bool = False,
        **options: Unpack[RouterOptions],
    ) -> APIRouter:
        """The REST API, the live event stream and the dashboard, as an ``APIRouter``.

        ``auth`` guards every route; without it this raises, unless the router is served
        open on purpose with ``insecure_no_auth=True``. See ``docs/api.md``.

        Example:
            ```python
            app.include_router(aw.router(auth=Depends(require_admin)), prefix="/afterwork")
            ```
        """
        from .fastapi.router import create_router

        return create_router(self, auth=auth, insecure_no_auth=insecure_no_auth, **options)

    @overload
    def lifespan(self, app: Any, /) -> AbstractAsyncContextManager[None]: ...

    @overload
    def lifespan(
        self,
        app: None = None,
        /,
        *,
        worker: bool = True,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> Callable[[Any], AbstractAsyncContextManager[None]]: ...

    def lifespan(
        self,
        app: Any = None,
        /,
        *,
        worker: bool = True,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> AbstractAsyncContextManager[None] | Callable[[Any], AbstractAsyncContextManager[None]]:
        """A FastAPI/Starlette lifespan: ``FastAPI(lifespan=aw.lifespan)``.

        It opens the store, runs an in-process worker (``worker=False`` for a web-only
        process: ``FastAPI(lifespan=aw.lifespan(worker=False))``) and stops it gracefully.

        Compose it with the app's own lifespan by entering it inside yours::

            @asynccontextmanager
            async def lifespan(app: FastAPI):
                async with aw.lifespan(app):
                    ...  # your own startup
                    yield
                    ...  # your own shutdown, before afterwork's
        """
        if app is None:

            def factory(app: Any) -> AbstractAsyncContextManager[None]:
                return self._lifespan(app, worker=worker, concurrency=concurrency, queues=queues)

            factory.afterwork = self  # type: ignore[attr-defined]  # how Jobs finds it unstarted
            return factory
        return self._lifespan(app, worker=worker, concurrency=concurrency, queues=queues)

    @asynccontextmanager
    async def _lifespan(
        self,
        app: Any,
        *,
        worker: bool,
        concurrency: int | None,
        queues: Sequence[str] | None,
    ) -> AsyncIterator[None]:
        state = getattr(app, "state", None)
        if state is not None:
            state.afterwork = self
        _remember_router(app, self)
        previous, self._app = self._app, app
        try:
            async with self, self.runtime(worker=worker, concurrency=concurrency, queues=queues):
                yield
        finally:
            self._app = previous


#: The instance each served app's router belongs to, by ``id`` (routers are not hashable):
#: requests to a mounted sub-application carry the outermost router (``scope["router"]``),
#: so ``Jobs`` finds the instance there.
_ROUTERS: dict[int, tuple[weakref.ref[Any], Afterwork]] = {}


def _remember_router(app: Any, aw: Afterwork) -> None:
    router = getattr(app, "router", None)
    if router is None:
        return
    for key, (ref, _) in list(_ROUTERS.items()):
        if ref() is None:
            del _ROUTERS[key]
    with contextlib.suppress(TypeError):  # not weak-referenceable: found otherwise
        _ROUTERS[id(router)] = (weakref.ref(router), aw)


def served_by(router: Any) -> Afterwork | None:
    """The instance that served (or attached) the app whose router is ``router``."""
    entry = _ROUTERS.get(id(router))
    return entry[1] if entry is not None and entry[0]() is router else None


class ServiceContext:
    """Passed to a service that asks for it by annotation: ``ctx: ServiceContext``.

    It lives beside :class:`Afterwork` (not in the engine) because it hands the service
    the instance itself, typed.

    Example:
        ```python
        @aw.service(restart="on-failure", ready="explicit")
        async def consumer(ctx: ServiceContext) -> None:
            async with connect() as bus:
                ctx.ready()  # the app starts serving only now
                while not ctx.stopping:
                    message = await bus.get()
                    await handle.enqueue(message)
        ```
    """

    def __init__(
        self,
        name: str,
        afterwork: Afterwork,
        *,
        restarts: int,
        stop: anyio.Event,
        on_ready: Callable[[], None],
    ) -> None:
        self.name = name
        """The service's name."""
        self.afterwork = afterwork
        """The :class:`~afterwork.Afterwork` instance, to enqueue jobs and read the store."""
        self.restarts = restarts
        """How many times the service was started again before this run (0: first run)."""
        self._stop = stop
        self._on_ready = on_ready

    def __repr__(self) -> str:
        return f"<ServiceContext {self.name} restarts={self.restarts}>"

    @property
    def stopping(self) -> bool:
        """``True`` once shutdown began (or a singleton lost its lease). The task is also
        cancelled at its next ``await``."""
        return self._stop.is_set()

    async def wait_stopping(self) -> None:
        """Return once shutdown began (or a singleton lost its lease)."""
        await self._stop.wait()

    def ready(self) -> None:
        """Tell the runtime this service has started. Idempotent."""
        self._on_ready()


def _service_context_injector(
    param: inspect.Parameter, annotation: Any
) -> _signature.Injected | None:
    if annotation is ServiceContext:
        return _signature.Injected(param.name, "service_context")
    return None


# ServiceContext is found by annotation through the same hooks as JobContext and FastAPI's
# Depends, so every injected kind is recognised in one place. The job runner never fills
# "service_context": tasks cannot ask for one. A dependency of a service may ask for it.
_signature.INJECTORS.append(_service_context_injector)
dependencies.PROVIDED_TYPES.add(ServiceContext)


def _told(job: Job, new: NewJob, owner: Afterwork) -> Job:
    """``job`` as an enqueue of ``new`` returned it, saying whether it was created now,
    bound to ``owner`` (one copy: a job has many fields)."""
    created_now = job.id == new.id
    if job._owner is owner and job.created_now is created_now:
        return job  # the store made it so (see ``PostgresBackend.job_owner``)
    return job.told(created_now, owner)
