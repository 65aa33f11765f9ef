"""Runs one claimed job: decode, inject, call with a timeout, and record the outcome.

Everything that decides what happens after an attempt (retry, backoff, give up, release
on shutdown) lives here, once, above the backend protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import random
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._middleware import JobCall, run_through
from .._task_names import unknown_task_message
from ..backends.base import Claim, HeartbeatReply, Outcome
from ..context import JobContext
from ..exceptions import EnqueueError
from ..job import Job, JobError, JobStatus
from ..retry import Retry
from ..task import Task, TaskOptions
from .dependencies import inject_job
from .isolation import ChildDied, ChildResult, ProcessPool

if TYPE_CHECKING:
    from .host import Host

__all__ = ("JobRun", "Runner", "apply_heartbeat")

# The logger keeps the name it had when this module was ``afterwork.runner``.
logger: logging.Logger = logging.getLogger("afterwork.runner")

#: Seconds the teardown of a job's dependencies may take before it is abandoned.
CLEANUP_TIMEOUT = 30.0

#: Reasons a running job is stopped from outside.
CANCEL = "cancel"  # someone cancelled it: the job ends ``cancelled``
SHUTDOWN = "shutdown"  # the worker is stopping: the job is released, no attempt spent
LOST = "lost"  # the lease was taken over: write nothing


def log_extra(action: str, job: Job, worker: str | None = None, **more: Any) -> dict[str, Any]:
    """The structured fields every lifecycle log line carries."""
    return {
        "action": action,
        "job": {"id": job.id, "task": job.task, "queue": job.queue, "attempt": job.attempts},
        "worker": {"id": worker},
        **more,
    }


#: Results stored as they are (the common ``None`` first): pydantic_core is loaded for others.
_PLAIN_RESULTS: frozenset[type] = frozenset((str, int, bool, float))
_SUCCEEDED_NONE = Outcome.succeeded(None)


@dataclass(eq=False, slots=True)
class JobRun:
    """The state of one job while it runs in this process."""

    claim: Claim
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reason: str | None = None
    context: JobContext | None = None
    thread_done: asyncio.Event | None = None
    """Set when a sync job's thread really returned (it may outlive a timeout)."""
    recording: bool = False
    """Its outcome is being written: the (fenced) write decides whether the lease held."""
    on_recording: Callable[[JobRun], Awaitable[None]] | None = None
    """Awaited once, when the attempt is over and only its outcome's write is left (a
    worker frees the job's slot then, so the next jobs' starts join the same group commit)."""
    slot_freed: bool = False
    """Its worker slot was freed before its outcome's write returned (``on_recording``)."""
    _progress: tuple[float, str | None] | None = None
    _progress_task: asyncio.Task[None] | None = None

    @property
    def job(self) -> Job:
        return self.claim.job

    def stop(self, reason: str) -> None:
        """Stop the job: the first reason given wins."""
        if self.reason is None:
            self.reason = reason
        if self.context is not None:
            self.context._set_cancelled()
        self.scope.cancel()


def apply_heartbeat(reply: HeartbeatReply, runs: Mapping[str, JobRun], worker_id: str) -> None:
    """Stop the runs a heartbeat reply names: lost leases (write nothing) and cancels."""
    for job_id in reply.lost:
        run = runs.get(job_id)
        # A run whose outcome is being written has nothing left to stop: a finish applied
        # but not yet acknowledged (a reply lost in an outage, then retried) already ended
        # the lease, and the write itself says whether the lease held.
        if run is not None and not run.recording:
            logger.warning(
                "job %s (%s) lost its lease (another worker took it over); stopping it",
                job_id,
                run.job.task,
                extra=log_extra("lease_lost", run.job, worker_id),
            )
            run.stop(LOST)
    for job_id in reply.cancel:
        run = runs.get(job_id)
        if run is not None:
            run.stop(CANCEL)


class _Timeout(Exception):
    def __init__(self, seconds: float | None = None) -> None:
        super().__init__()
        self.seconds = seconds


class _ChildFailed(Exception):
    """An isolated attempt failed in its child (the error is the child's)."""

    def __init__(self, error: JobError, *, final: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.final = final


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How an attempt ended: what to record, what to log, and what ended it."""

    outcome: Outcome | None  # None: the lease was lost, record nothing
    exc_to_log: BaseException | None = None
    ended_by: BaseException | None = None
    """The exception thrown into the job's dependencies as they are torn down."""


class Runner:
    """Runs claimed jobs for a worker (or in-process for ``Jobs.add_task``)."""

    def __init__(
        self,
        host: Host,
        *,
        worker_id: str,
        limiter: anyio.CapacityLimiter,
        rng: random.Random,
    ) -> None:
        self.host = host
        self.worker_id = worker_id
        self.limiter = limiter
        self.rng = rng
        self._pool: ProcessPool | None = None  # started by the first isolated attempt

    # -- entry points --------------------------------------------------------------------

    async def run_claim(self, run: JobRun) -> Job | None:
        """Run a job claimed from the store: find its task, decode its arguments, run it."""
        job = run.job
        task = self.host.tasks.get(job.task)
        if task is None:
            error = JobError.from_message(
                "afterwork.TaskNotFound", unknown_task_message(job.task, self.host.tasks)
            )
            return await self._give_up(run, error, None)
        try:
            args, kwargs = task.codec.decode(job.args, job.kwargs)
        except EnqueueError as exc:
            error = JobError.from_message("afterwork.BadArguments", str(exc))
            return await self._give_up(run, error, None)
        return await self.execute(run, task.func, args, kwargs, task.opts, task=task)

    async def execute(
        self,
        run: JobRun,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        *,
        task: Task[Any, Any] | None = None,
        is_async: bool | None = None,
    ) -> Job | None:
        """Call ``func`` for ``run`` and record how it ended, inside the host's middleware."""
        chain = self.host.middleware_chain
        if not chain:  # the hot path: no middleware, no wrapping
            return await self._execute(run, func, args, kwargs, options, task, is_async)
        run.on_recording = None  # a middleware's code runs after the write: the slot waits
        job = run.job
        call = JobCall("attempt", job.task, job.queue, job.id, job=job, worker=self.worker_id)
        ran = False
        recorded: Job | None = None

        async def attempt() -> Job | None:
            nonlocal ran, recorded
            recorded = await self._execute(run, func, args, kwargs, options, task, is_async)
            ran = True
            return recorded

        try:
            returned = await run_through(chain, call, attempt)
        except Exception as exc:
            if ran:  # the outcome is written; a middleware failed after it
                logger.warning(
                    "job %s (%s): a middleware failed after the attempt",
                    job.id,
                    job.task,
                    exc_info=exc,
                    extra=log_extra("middleware_failed", job, self.worker_id),
                )
                return recorded
            error = JobError.from_exception(exc)
            return await self._record(run, self._after_failure(job, options, error, exc)[0], exc)
        if not ran:  # a middleware did not call call_next: the attempt did not run
            error = JobError.from_message(
                "afterwork.NotRun", "a middleware returned without calling call_next"
            )
            return await self._record(run, self._after_failure(job, options, error, None)[0], None)
        del returned  # what the worker goes on with is what the store recorded
        return recorded

    async def _execute(
        self,
        run: JobRun,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        task: Task[Any, Any] | None,
        is_async: bool | None,
    ) -> Job | None:
        timeout = run.job.timeout if run.job.timeout is not None else options.timeout
        if task is not None and self.isolated(task):  # the one in-process/isolated switch
            func = functools.partial(self._in_child, run, task, options, timeout)
            is_async, args, kwargs, task = True, (), {}, None  # the child decodes and injects
            timeout = None  # the child's clock: its start-up does not count
        # Only a task that injects something (a JobContext, dependencies) needs a context
        # and an exit stack; most jobs skip both (they are the hot path of a worker).
        # Injected dependencies are torn down after the attempt, whatever its outcome; the
        # exception that ended it is thrown into them, as FastAPI does after a route.
        stack = contextlib.AsyncExitStack() if task is not None and task.codec.injected else None
        inject = self._prepare_injection(run, task, stack) if stack and task else None
        if is_async is None:
            is_async = task.is_async if task is not None else inspect.iscoroutinefunction(func)
        try:
            attempt = await self._attempt(
                run, func, is_async, args, kwargs, timeout, options, inject
            )
        except BaseException as exc:  # cancelled from outside: clean up, then propagate
            if stack is not None:
                await self._close_stack(run, stack, exc, task)
            raise
        if stack is not None:
            attempt = await self._tear_down(run, stack, task, attempt, options)
        if run._progress_task is not None or run._progress is not None:
            await self._flush_progress(run)
        if attempt.outcome is None:  # the lease was lost: somebody else owns the job now
            logger.warning(
                "job %s (%s) lost its lease; its outcome is discarded",
                run.job.id,
                run.job.task,
                extra=log_extra("job_lease_lost", run.job, self.worker_id),
            )
            return None
        return await self._record(run, attempt.outcome, attempt.exc_to_log)

    def _prepare_injection(
        self, run: JobRun, task: Task[Any, Any], stack: contextlib.AsyncExitStack
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """Give ``run`` its context; return what resolves the injected values in the call."""
        loop = asyncio.get_running_loop()
        context = run.context = JobContext(job=run.job, _report=self._reporter(run, loop))
        overrides = self.host.dependency_overrides()
        return functools.partial(inject_job, task, context, stack, overrides)

    async def _attempt(
        self,
        run: JobRun,
        func: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        options: TaskOptions,
        inject: Callable[[], Awaitable[dict[str, Any]]] | None,
    ) -> _Attempt:
        """Call the job once and decide its outcome (cancellation from outside propagates)."""
        job = run.job
        try:
            with run.scope:
                if timeout is None and inject is None and is_async:
                    result = await func(*args, **kwargs)  # the common case: no closure
                else:
                    result = await self._call(run, func, is_async, args, kwargs, timeout, inject)
        except _Timeout as exc:
            seconds = timeout if exc.seconds is None else exc.seconds
            ended_by = TimeoutError(f"the job did not finish within its {seconds:g}s timeout")
            error = JobError.from_message("TimeoutError", str(ended_by))
            return _Attempt(*self._after_failure(job, options, error, None), ended_by=ended_by)
        except _ChildFailed as exc:
            if exc.final:
                return _Attempt(Outcome.failed(exc.error), ended_by=exc)
            return _Attempt(*self._after_failure(job, options, exc.error, None), ended_by=exc)
        except Retry as exc:
            error = JobError.from_exception(exc)
            failure = self._after_failure(job, options, error, exc, delay=exc.delay)
            return _Attempt(*failure, ended_by=exc)
        except Exception as exc:
            failure = self._after_failure(job, options, JobError.from_exception(exc), exc)
            return _Attempt(*failure, ended_by=exc)
        if run.scope.cancelled_caught:
            cancelled = anyio.get_cancelled_exc_class()()
            return _Attempt(self._stopped_outcome(run), ended_by=cancelled)
        return _Attempt(self._success(job, result))

    async def _tear_down(
        self,
        run: JobRun,
        stack: contextlib.AsyncExitStack,
        task: Task[Any, Any] | None,
        attempt: _Attempt,
        options: TaskOptions,
    ) -> _Attempt:
        """Close the job's dependencies; a failed teardown after a success fails the attempt."""
        cleanup_error = await self._close_stack(run, stack, attempt.ended_by, task)
        if cleanup_error is None or attempt.ended_by is not None or attempt.outcome is None:
            return attempt
        # The job returned but its dependencies could not be torn down (a failed commit):
        # the attempt did not complete.
        error = JobError.from_exception(cleanup_error)
        return _Attempt(*self._after_failure(run.job, options, error, cleanup_error))

    async def _close_stack(
        self,
        run: JobRun,
        stack: contextlib.AsyncExitStack,
        ended_by: BaseException | None,
        task: Task[Any, Any] | None,
    ) -> Exception | None:
        """Tear the job's dependencies down; return the error a teardown raised, if any."""
        job = run.job
        # Shielded (the attempt may have been cancelled) but bounded: a hung teardown must
        # not hold the worker forever.
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True) as scope:
            done = run.thread_done
            if (
                done is not None
                and task is not None
                and any(i.kind == "dependency" for i in task.codec.injected)
            ):
                # A sync job abandoned on timeout or cancel may still use its dependencies:
                # do not close them under its thread.
                await done.wait()
            try:
                if ended_by is None:
                    await stack.aclose()
                else:
                    await stack.__aexit__(type(ended_by), ended_by, ended_by.__traceback__)
            except BaseException as exc:
                if exc is ended_by:  # re-raised by a teardown: nothing new went wrong
                    return None
                if not isinstance(exc, Exception):
                    raise
                logger.warning(
                    "job %s (%s): a dependency failed while being cleaned up",
                    job.id,
                    job.task,
                    exc_info=exc,
                    extra=log_extra("dependency_cleanup_failed", job, self.worker_id),
                )
                return exc
        if scope.cancelled_caught:
            logger.warning(
                "job %s (%s): cleaning up its dependencies took over %gs; abandoned",
                job.id,
                job.task,
                CLEANUP_TIMEOUT,
                extra=log_extra("dependency_cleanup_timeout", job, self.worker_id),
            )
        return None

    # -- calling -------------------------------------------------------------------------

    def isolated(self, task: Task[Any, Any]) -> bool:
        """Whether ``task``'s attempts run in a child process (docs/isolation.md)."""
        return (task.opts.isolation or self.host.config.isolation) == "process"

    async def _in_child(
        self, run: JobRun, task: Task[Any, Any], options: TaskOptions, timeout: float | None
    ) -> Any:
        """One attempt in a child process of the pool; its failures as ``_ChildFailed``."""
        if self._pool is None:
            config = self.host.config
            self._pool = ProcessPool(
                max_jobs_per_child=config.max_jobs_per_child, kill_grace=config.kill_grace
            )
        limit = options.max_memory_mb or self.host.config.max_memory_mb
        report = self._reporter(run, asyncio.get_running_loop())
        try:
            result: ChildResult = await self._pool.run(
                task, run.job, timeout=timeout, max_memory_mb=limit, on_progress=report
            )
        except TimeoutError:
            if run.context is not None:
                run.context._set_cancelled()
            raise _Timeout(timeout) from None
        except ChildDied as exc:
            raise _ChildFailed(exc.error) from None
        if result.error is None:
            return result.value
        if result.retry:
            raise Retry(delay=result.retry_delay or 0.0)
        raise _ChildFailed(result.error, final=result.dont_retry)

    async def aclose(self) -> None:
        """Stop the isolation children, if any ran (the worker calls it as it stops)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    async def _call(
        self,
        run: JobRun,
        func: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        inject: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> Any:
        async def call() -> Any:
            # Dependencies are resolved inside the cancel scope and the timeout.
            full = kwargs if inject is None else {**kwargs, **await inject()}
            if is_async:
                return await func(*args, **full)
            return await self._threaded(run, func, args, full)()

        if timeout is None:
            return await call()
        with anyio.move_on_after(timeout) as deadline:
            return await call()
        if deadline.cancelled_caught and not run.scope.cancel_called:
            if run.context is not None:
                run.context._set_cancelled()
            raise _Timeout()
        return None

    def _threaded(
        self, run: JobRun, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Any]:
        loop = asyncio.get_running_loop()
        done = run.thread_done = asyncio.Event()
        # Whoever comes second sets ``done``: the waiter, when the thread returned (no
        # second wake-up of the loop for it), or the thread, when the waiter gave up.
        lock = threading.Lock()
        state = {"ended": False, "abandoned": False}

        def target() -> Any:
            try:
                return func(*args, **kwargs)
            finally:
                with lock:
                    state["ended"] = True
                    abandoned = state["abandoned"]
                if abandoned:
                    loop.call_soon_threadsafe(done.set)

        async def call() -> Any:
            # A thread cannot be killed: on timeout or cancel we stop waiting for it
            # (abandon_on_cancel) and the worker keeps its slot until ``done`` is set.
            try:
                return await anyio.to_thread.run_sync(
                    target, abandon_on_cancel=True, limiter=self.limiter
                )
            finally:
                with lock:
                    ended = state["ended"]
                    state["abandoned"] = not ended
                if ended:
                    done.set()

        return call

    # -- outcomes ------------------------------------------------------------------------

    def _stopped_outcome(self, run: JobRun) -> Outcome | None:
        if run.reason == SHUTDOWN:
            return Outcome.released()
        if run.reason == CANCEL:
            return Outcome.cancelled(JobError.from_message("afterwork.Cancelled", "cancelled"))
        return None  # LOST

    def _success(self, job: Job, result: Any) -> Outcome:
        if result is None and self.host.config.max_result >= 4:
            return _SUCCEEDED_NONE  # ``null``: nothing to convert or measure
        try:
            if result is None or type(result) in _PLAIN_RESULTS:
                value = result  # what to_jsonable_python returns for it, without pydantic
            else:
                from pydantic_core import to_jsonable_python

                value = to_jsonable_python(result)
            size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8"))
        except Exception as exc:
            return Outcome.failed(
                JobError.from_message(
                    "afterwork.ResultNotSerializable",
                    f"the job's result cannot be stored as JSON: {exc}",
                )
            )
        max_result = self.host.config.max_result
        if size > max_result:
            return Outcome.failed(
                JobError.from_message(
                    "afterwork.ResultTooLarge",
                    f"the job's result takes {size} bytes as JSON, over the "
                    f"{max_result}-byte limit",
                )
            )
        return Outcome.succeeded(value)

    def _after_failure(
        self,
        job: Job,
        options: TaskOptions,
        error: JobError,
        exc: BaseException | None,
        *,
        delay: float | None = None,
    ) -> tuple[Outcome, BaseException | None]:
        final = job.failures >= job.max_attempts or (
            exc is not None and isinstance(exc, options.dont_retry)
        )
        if final:
            return Outcome.failed(error), exc
        if delay is None:
            delay = options.backoff.delay(job.failures, self.rng)
        return Outcome.retry(error, delay), exc

    async def _give_up(self, run: JobRun, error: JobError, exc: BaseException | None) -> Job | None:
        return await self._record(run, Outcome.failed(error), exc)

    async def _write_outcome(self, run: JobRun, outcome: Outcome) -> Job | None:
        """Write how the attempt ended (fenced by the lease); ``None`` if it was lost."""
        return await self.host.backend.finish(run.claim.lease, outcome)

    async def _record(self, run: JobRun, outcome: Outcome, exc: BaseException | None) -> Job | None:
        job = run.job
        run.recording = True
        if (recording := run.on_recording) is not None:
            run.on_recording = None
            await recording(run)
        finished = await self._write_outcome(run, outcome)
        if finished is None:
            logger.warning(
                "job %s (%s) lost its lease before its outcome was written; discarded",
                job.id,
                job.task,
                extra=log_extra("job_lease_lost", job, self.worker_id),
            )
            return None
        status = finished.status
        if status is JobStatus.SUCCEEDED or status is JobStatus.CANCELLED:
            if logger.isEnabledFor(logging.INFO):  # the hot path: build nothing if unlogged
                extra = log_extra(f"job_{status.value}", job, self.worker_id)
                # ``logger.info`` without its walk up the stack for the caller (a line per
                # job): the record names this line, as ``findCaller`` would.
                here = sys._getframe()
                logger.handle(
                    logger.makeRecord(
                        logger.name,
                        logging.INFO,
                        here.f_code.co_filename,
                        here.f_lineno,
                        "job %s (%s) %s",
                        (job.id, job.task, status.value),
                        None,
                        here.f_code.co_name,
                        extra,
                    )
                )
            return finished
        extra = log_extra(f"job_{status.value}", job, self.worker_id)
        error = outcome.error
        if status is JobStatus.FAILED:
            # Exactly once per failed job, with its traceback.
            logger.error(
                "job %s (%s) failed after %d attempt(s): %s: %s",
                job.id,
                job.task,
                job.attempts,
                error.type if error else "?",
                error.message if error else "",
                exc_info=exc,
                extra=extra,
            )
        elif status is JobStatus.SCHEDULED:
            logger.warning(
                "job %s (%s) attempt %d failed (%s: %s); retrying in %.2fs",
                job.id,
                job.task,
                job.attempts,
                error.type if error else "?",
                error.message if error else "",
                outcome.delay,
                extra=extra,
            )
        else:
            logger.info("job %s (%s) %s", job.id, job.task, status.value, extra=extra)
        return finished

    # -- progress ------------------------------------------------------------------------

    def _reporter(
        self, run: JobRun, loop: asyncio.AbstractEventLoop
    ) -> Callable[[float, str | None], None]:
        def schedule() -> None:
            if run._progress_task is None or run._progress_task.done():
                run._progress_task = loop.create_task(self._write_progress(run))

        def report(fraction: float, message: str | None) -> None:
            run._progress = (fraction, message)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                schedule()
            else:
                loop.call_soon_threadsafe(schedule)

        return report

    async def _write_progress(self, run: JobRun) -> None:
        while run._progress is not None:
            fraction, message = run._progress
            run._progress = None
            try:
                await self.host.backend.set_progress(run.claim.lease, fraction, message)
            except Exception:
                logger.warning("could not record progress of job %s", run.job.id, exc_info=True)

    async def _flush_progress(self, run: JobRun) -> None:
        task = run._progress_task
        if task is not None and not task.done():
            await task
        if run._progress is not None:
            await self._write_progress(run)
