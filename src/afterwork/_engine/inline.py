"""The in-process runner of ``Jobs.add_task``: a plain callable run here, as a tracked job.

The job is created already claimed by this process and kept leased while it runs. If the
process dies, recovery fails it rather than requeueing it (``max_attempts = 0``): nobody
else can run a plain callable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..backends.base import Claim, Lease, NewJob, Outcome
from ..job import Job, JobError, JobStatus
from ..task import TaskOptions
from .runner import CANCEL, JobRun, Runner, apply_heartbeat
from .runner import logger as _runner_logger
from .worker import worker_id
from .writebehind import WriteBehind

if TYPE_CHECKING:
    from .host import Host

__all__ = ("INLINE_QUEUE", "InlineRunner")

# The logger keeps the name these messages had when this code lived in the web layer.
logger: logging.Logger = logging.getLogger("afterwork.fastapi._jobs")

#: The queue inline jobs are recorded in (no worker claims from it).
INLINE_QUEUE = "inline"

#: Sync callables run in worker threads; at most this many at once per process.
THREADS = 40

#: The options of every plain callable's job (built once: they are validated when built).
_OPTIONS = TaskOptions(queue=INLINE_QUEUE)


def _safe_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _LocalRunner(Runner):
    """The runner of inline jobs: the outcome of a job whose row is not written yet is
    recorded in memory (``writebehind``), any other goes to the store."""

    behind: WriteBehind

    async def _write_outcome(self, run: JobRun, outcome: Outcome) -> Job | None:
        ended = await self.behind.finish(run.claim.lease, outcome)
        if isinstance(ended, Lease):
            return await self.host.backend.finish(ended, outcome)
        return None if ended is None else ended.current()

    async def _record(self, run: JobRun, outcome: Outcome, exc: BaseException | None) -> Job | None:
        # The hot path of a plain callable: it succeeded, its row is not written yet, no
        # line is logged for it and no middleware awaits the ended job. Its outcome is
        # kept in memory as it is; the ended job is built only if asked for
        # (``aw.get_job``), the row by the write-behind.
        if (
            outcome.status is JobStatus.SUCCEEDED
            and not _runner_logger.isEnabledFor(logging.INFO)
            and not self.host.middleware_chain
            and self.behind.end_now(run.claim.lease, outcome)
        ):
            run.recording = True
            return None
        return await super()._record(run, outcome, exc)


class InlineRunner:
    """Runs plain callables in this process, each tracked as a job (``Jobs.add_task``)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.id: str = worker_id("inline")
        self._runs: dict[str, JobRun] = {}
        self._loops: dict[str, asyncio.AbstractEventLoop] = {}  # the loop each job runs on
        self._beats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )  # each loop's heartbeat task
        self.behind: WriteBehind = WriteBehind(host, self.id, on_written=self._written)
        self._runner = _LocalRunner(
            host, worker_id=self.id, limiter=anyio.CapacityLimiter(THREADS), rng=host.rng
        )
        self._runner.behind = self.behind
        self._new_scope: Callable[[], anyio.CancelScope] | None = None

    def _written(self, job_id: str, token: str) -> None:
        """A running job's start was written with the store's own lease token."""
        run = self._runs.get(job_id)
        if run is not None:
            run.claim = Claim(run.claim.job, token)

    def cancel_local(self, job_id: str) -> bool:
        """Cancel an inline job running here; ``False`` if none has that id."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.stop(CANCEL)
        return True

    async def run(
        self,
        job_id: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str,
        is_async: bool,
        returns: bool = True,
    ) -> Job | None:
        """Record ``func(*args, **kwargs)`` as job ``job_id``, run it here, record its end.

        The arguments are stored as their ``repr`` (they stay in memory, need not be JSON).
        Returns the finished job, or ``None`` if its lease was lost; with ``returns=False``,
        ``None`` (the request path: an ended job kept in memory is then built only if
        asked for, ``aw.get_job``; most are only ever written).
        """
        new = self.plain_job(job_id, name, args, kwargs)
        lease_ttl = self.host.config.lease_ttl
        if self.behind.usable():
            claim = self.behind.begin(new, lease_ttl)  # its row is written later, in a group
        else:
            claim = await self.host.backend.start(new, self.id, lease_ttl=lease_ttl)
        if not is_async:
            # A sync callable runs in a worker thread, awaited as an async call (no timeout,
            # nothing injected: the runner awaits it directly, within the job's scope). On
            # a cancel the thread is abandoned, as the runner's own thread call does.
            func = self._in_thread(func)
        new_scope = self._new_scope
        if new_scope is None:  # ``anyio.CancelScope()`` looks the library up each time
            new_scope = self._new_scope = type(anyio.CancelScope())
        runner, options = self._runner, _OPTIONS

        async def call(run: JobRun) -> Job | None:
            return await runner.execute(run, func, args, kwargs, options, is_async=True)

        finished = await self._supervised(JobRun(claim, new_scope()), call)
        if finished is None and returns:  # ended in memory (or its lease lost)
            record = self.behind.record(job_id)
            if record is not None and record.outcome is not None:
                finished = record.current().bind(self.host)
        return finished if returns else None

    def _in_thread(self, func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        limiter = self._runner.limiter

        async def in_thread(*args: Any, **kwargs: Any) -> Any:
            call = functools.partial(func, *args, **kwargs)
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=limiter)

        return in_thread

    @staticmethod
    def plain_job(job_id: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NewJob:
        """The job of a plain callable: its arguments recorded as their ``repr``."""
        options = _OPTIONS
        return NewJob(
            id=job_id,
            task=name,
            queue=options.queue,
            args=[_safe_repr(a) for a in args],
            kwargs={k: _safe_repr(v) for k, v in kwargs.items()},
            max_attempts=0,  # in-process only: never requeued by recovery
            timeout=options.timeout,
            result_ttl=options.result_ttl,
        )

    async def record_never_run(self, new: NewJob, reason: str) -> Job | None:
        """Record ``new`` as a job that will never run: created here, cancelled at once,
        with ``reason`` as its error (``afterwork.NeverRun``)."""
        lease_ttl = self.host.config.lease_ttl
        claim = await self.host.backend.start(new, self.id, lease_ttl=lease_ttl)
        error = JobError.from_message("afterwork.NeverRun", reason)
        return await self.host.backend.finish(claim.lease, Outcome.cancelled(error))

    async def run_task(self, new: NewJob) -> Job | None:
        """Store ``new`` (a registered task's job) already claimed here and run it now.

        What eager mode (``Afterwork(..., eager=True)``) does instead of waiting for a
        worker: the arguments are decoded from the stored JSON, exactly as a worker would,
        and the attempt is recorded like any other (a failure with retries left is
        scheduled again). Returns the job as the attempt left it, or ``None`` if its lease
        was lost.
        """
        lease_ttl = self.host.config.lease_ttl
        claim = await self.host.backend.start(new, self.id, lease_ttl=lease_ttl)
        return await self._supervised(JobRun(claim), self._runner.run_claim)

    async def _supervised(
        self, run: JobRun, call: Callable[[JobRun], Awaitable[Job | None]]
    ) -> Job | None:
        """Run ``call(run)`` with its lease kept alive; the finished job bound to the host.

        One heartbeat task per event loop renews the leases of all the jobs running here
        on that loop (a job whose row is not written yet has nothing to renew).
        """
        job_id = run.job.id
        loop = asyncio.get_running_loop()
        self._runs[job_id] = run
        self._loops[job_id] = loop
        beat = self._beats.get(loop)
        if beat is None or beat.done():
            self._beats[loop] = loop.create_task(self._keep_alive(loop))
        finished: Job | None = None
        try:
            finished = await call(run)
        finally:
            del self._runs[job_id]
            del self._loops[job_id]
        return None if finished is None else finished.bind(self.host)

    async def _keep_alive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Renew the leases of this loop's jobs until none runs; stop those lost or cancelled."""
        config = self.host.config
        interval = config.heartbeat_interval or config.lease_ttl / 3
        try:
            while any(owner is loop for owner in self._loops.values()):
                await self.host.clock.sleep(interval)
                runs = {
                    job_id: run
                    for job_id, run in self._runs.items()
                    if self._loops.get(job_id) is loop and self.behind.get(job_id) is None
                }
                if not runs:
                    continue
                try:
                    reply = await self.host.backend.heartbeat(
                        [run.claim.lease for run in runs.values()], lease_ttl=config.lease_ttl
                    )
                except Exception:
                    logger.warning(
                        "could not renew the lease of job(s) %s",
                        ", ".join(runs),
                        exc_info=True,
                    )
                    continue
                apply_heartbeat(reply, runs, self.id)
        finally:
            if self._beats.get(loop) is asyncio.current_task():
                del self._beats[loop]
