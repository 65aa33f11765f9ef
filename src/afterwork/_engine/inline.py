"""The in-process runner of ``Jobs.add_task``: a plain callable run here, as a tracked job.

The job is created already claimed by this process and kept leased while it runs. If the
process dies, recovery fails it rather than requeueing it (``max_attempts = 0``): nobody
else can run a plain callable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..backends.base import NewJob, Outcome
from ..job import Job, JobError
from ..task import TaskOptions
from .runner import CANCEL, JobRun, Runner, apply_heartbeat
from .worker import worker_id

if TYPE_CHECKING:
    from .host import Host

__all__ = ("INLINE_QUEUE", "InlineRunner")

# The logger keeps the name these messages had when this code lived in the web layer.
logger: logging.Logger = logging.getLogger("afterwork.fastapi._jobs")

#: The queue inline jobs are recorded in (no worker claims from it).
INLINE_QUEUE = "inline"

#: Sync callables run in worker threads; at most this many at once per process.
THREADS = 40


def _safe_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class InlineRunner:
    """Runs plain callables in this process, each tracked as a job (``Jobs.add_task``)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.id: str = worker_id("inline")
        self._runs: dict[str, JobRun] = {}
        self._runner = Runner(
            host, worker_id=self.id, limiter=anyio.CapacityLimiter(THREADS), rng=host.rng
        )

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
    ) -> Job | None:
        """Record ``func(*args, **kwargs)`` as job ``job_id``, run it here, record its end.

        The arguments are stored as their ``repr`` (they stay in memory, need not be JSON).
        Returns the finished job, or ``None`` if its lease was lost.
        """
        options = TaskOptions(queue=INLINE_QUEUE)
        new = self.plain_job(job_id, name, args, kwargs)
        lease_ttl = self.host.config.lease_ttl
        claim = await self.host.backend.start(new, self.id, lease_ttl=lease_ttl)

        async def call(run: JobRun) -> Job | None:
            return await self._runner.execute(run, func, args, kwargs, options, is_async=is_async)

        return await self._supervised(JobRun(claim), call)

    @staticmethod
    def plain_job(job_id: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NewJob:
        """The job of a plain callable: its arguments recorded as their ``repr``."""
        options = TaskOptions(queue=INLINE_QUEUE)
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
        """Run ``call(run)`` with its lease kept alive; the finished job bound to the host."""
        job_id = run.job.id
        self._runs[job_id] = run
        finished: Job | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._keep_alive, run)
                try:
                    finished = await call(run)
                finally:
                    group.cancel_scope.cancel()
        finally:
            del self._runs[job_id]
        return None if finished is None else finished.bind(self.host)

    async def _keep_alive(self, run: JobRun) -> None:
        """Renew the job's lease until cancelled; stop it if it was lost or cancelled."""
        config = self.host.config
        interval = config.heartbeat_interval or config.lease_ttl / 3
        while True:
            await self.host.clock.sleep(interval)
            try:
                reply = await self.host.backend.heartbeat(
                    [run.claim.lease], lease_ttl=config.lease_ttl
                )
            except Exception:
                logger.warning("could not renew the lease of job %s", run.job.id, exc_info=True)
                continue
            apply_heartbeat(reply, {run.job.id: run}, self.id)
