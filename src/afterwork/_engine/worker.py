"""The worker: claims jobs, runs them concurrently, renews leases, recovers dead ones."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..__about__ import __version__
from .._flow import flow_limits, rate_limits
from .._lifecycle import make_claim
from ..backends.base import (
    BeginsTogether,
    CancelWatch,
    Claim,
    ClaimBegins,
    Inspector,
    Outcome,
    WorkerInfo,
    WorkerPresence,
)
from ..job import JobError
from .outage import Outage, reconnect_delay
from .runner import CANCEL, LOST, SHUTDOWN, JobRun, Runner, apply_heartbeat, log_extra
from .watchdog import JOB_TASK_PREFIX, LoopWatchdog

if TYPE_CHECKING:
    from ..job import Job
    from .host import Host

__all__ = ("Worker", "WorkerStatistics")


class _Waitable(Protocol):
    async def wait(self) -> Any: ...


# The logger keeps the name it had when this module was ``afterwork.worker``.
logger: logging.Logger = logging.getLogger("afterwork.worker")


class _Admission(enum.Enum):
    START = "start"
    """Start it now."""
    HOLD = "hold"
    """Not yet; jobs behind it may start."""
    BLOCK = "block"
    """Not yet, and nothing behind it either."""


class _BeginBatch:
    """The jobs started before the first of them ran: begun by one store call, made by
    whichever of their tasks runs first (:meth:`Worker._begin`)."""

    __slots__ = ("done", "over", "runs", "sent", "started")

    def __init__(self) -> None:
        self.runs: list[JobRun] = []
        self.sent = False
        self.over = False  # the store call returned (or failed)
        self.started: list[Job | None] | None = None  # the store's answer, in ``runs`` order
        self.done: asyncio.Event | None = None  # made by the first to wait for the answer


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """What a worker has done so far (``worker.statistics()``)."""

    id: str
    running: int
    started: int
    finished: int
    lost_leases: int
    recovered: int


async def _first(*events: _Waitable) -> None:
    """Return as soon as one of ``events`` is set."""
    async with anyio.create_task_group() as group:

        async def wait(event: _Waitable) -> None:
            await event.wait()
            group.cancel_scope.cancel()

        for event in events:
            group.start_soon(wait, event)


def worker_id(name: str | None = None) -> str:
    """A new identity for each worker instance, even if it reuses a configured name."""
    base = name or socket.gethostname()
    return f"{base}:{os.getpid()}:{os.urandom(3).hex()}"


class Worker:
    """Runs jobs from the store until stopped.

    Use :meth:`Afterwork.worker` (an async context manager), ``aw.lifespan`` or the
    ``afterwork worker`` command rather than building one by hand.

    Stopping is graceful: no job is claimed after :meth:`stop`; running jobs get ``grace``
    seconds to finish, then they are cancelled and released back to the queue without
    spending an attempt. ``stop(now=True)`` skips the grace period.
    """

    def __init__(
        self,
        host: Host,
        *,
        concurrency: int,
        queues: Sequence[str] | None = None,
        grace: float,
        name: str | None = None,
        burst: bool = False,
        services: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.host: Host = host
        self.concurrency: int = concurrency
        self.queues: list[str] | None = list(queues) if queues else None
        self.grace: float = grace
        self.burst: bool = burst
        self.id: str = worker_id(name)
        self._services = services or (lambda: ())
        """The services this process runs now, announced with the worker's presence."""
        config = host.config
        self.lease_ttl: float = config.lease_ttl
        self.heartbeat_interval: float = config.heartbeat_interval or config.lease_ttl / 3
        self.runner: Runner = Runner(
            host,
            worker_id=self.id,
            limiter=anyio.CapacityLimiter(concurrency),
            rng=host.rng,
        )
        prefetch = config.prefetch
        self.prefetch: int = concurrency if prefetch is None else prefetch
        """Jobs claimed ahead of free slots, so the next job starts without a round trip."""
        self._claim_batch: int = max(1, (self.prefetch + 1) // 2)
        """While jobs wait in the buffer, claim again only once this many fit."""
        self._buffer: deque[Claim] = deque()
        self._jobs_group: TaskGroup | None = None
        self._job_tasks: dict[asyncio.Task[None], anyio.CancelScope] = {}
        """Each running job's task (a plain asyncio task, joined as the job group would)
        and the scope around it that cancels it as the group would (shields respected)."""
        self._job_errors: list[BaseException] = []
        self._begins: _BeginBatch | None = None  # started jobs whose begin is not sent yet
        self._begins_together = False  # the store's begin of a list is one write
        self._new_scope: Callable[[], anyio.CancelScope] = anyio.CancelScope
        """Makes a job's cancel scopes: the event loop's own class once running (``anyio.
        CancelScope()`` looks the loop's library up each time, twice per job)."""
        self._runs: dict[str, JobRun] = {}
        self._per_task: Counter[str] = Counter()
        self._solo: str | None = None  # a job that runs alone (see _admit)
        self._slots = 0  # jobs holding a slot (a timed-out sync job holds it until its thread ends)
        self._slot_freed = anyio.Event()
        self._slot_awaited = False  # someone holds _slot_freed: set and renew it on a free slot
        self._for_room = False  # ... and only room to claim again is worth waking it for
        self._claim_failures = 0  # consecutive failed claims: the next try backs off
        self._claim_begins = False  # the store's claim may begin the jobs started at once
        self._outage = Outage(self.id)  # one warning per store outage, not one per retry
        self._stopping = anyio.Event()
        self._idle_scope: anyio.CancelScope | None = None
        self._started = 0
        self._finished = 0
        self._lost = 0
        self._recovered = 0
        threshold = config.block_threshold
        self.watchdog: LoopWatchdog | None = (
            LoopWatchdog(self, threshold) if threshold is not None else None
        )
        """Reports jobs that block the event loop (``None`` when ``block_threshold`` is)."""

    def __repr__(self) -> str:
        return f"<Worker {self.id} running={len(self._runs)}/{self.concurrency}>"

    @property
    def running(self) -> list[JobRun]:
        return list(self._runs.values())

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            id=self.id,
            running=len(self._runs),
            started=self._started,
            finished=self._finished,
            lost_leases=self._lost,
            recovered=self._recovered,
        )

    # -- control -------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; with ``now`` also cancel running jobs at once (releasing them)."""
        if now:
            self.grace = 0.0
        self._stopping.set()
        if self._idle_scope is not None:
            self._idle_scope.cancel()
        if now:
            for run in list(self._runs.values()):
                run.stop(SHUTDOWN)

    def cancel_local(self, job_id: str) -> bool:
        """Cancel a job this worker runs; ``False`` if it runs none with that id."""
        run = self._runs.get(job_id)
        if run is None:
            if self._jobs_group is not None and any(c.job.id == job_id for c in self._buffer):
                self._jobs_group.start_soon(self._drop_buffered, frozenset(), {job_id})
                return True
            return False
        run.stop(CANCEL)
        return True

    # -- main loop -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> int:
        """Run until stopped (or, in burst mode, until nothing is due). Returns jobs run."""
        self.host.local_runs.attach(self)
        self._new_scope = type(anyio.CancelScope())
        logger.info(
            "worker %s started (concurrency %d, queues %s)",
            self.id,
            self.concurrency,
            ",".join(self.queues) if self.queues else "all",
            extra={"action": "worker_started", "worker": {"id": self.id}},
        )
        backend = self.host.backend
        self._claim_begins = isinstance(backend, ClaimBegins)
        self._begins_together = isinstance(backend, BeginsTogether)
        # Cancel requests made in other processes reach this worker at once where the
        # store can push them (the heartbeat reply covers every store).
        unwatch = (
            backend.watch_cancels(self.cancel_local) if isinstance(backend, CancelWatch) else None
        )
        try:
            if self.watchdog is not None:
                self.watchdog.start()
            async with anyio.create_task_group() as service_group:
                service_group.start_soon(self._heartbeat_loop)
                if not self.burst:
                    service_group.start_soon(self._reaper_loop)
                async with anyio.create_task_group() as jobs:
                    task_status.started()
                    try:
                        await self._claim_loop(jobs)
                        await self._shutdown()
                        await self._join_jobs(cancel=False)
                    finally:
                        self._jobs_group = None  # no job starts any more
                        if self._job_tasks:  # cancelled, or failed: as a task group would
                            with anyio.CancelScope(shield=True):
                                await self._join_jobs(cancel=True)
                if self._job_errors:
                    raise BaseExceptionGroup("unhandled errors in a job's task", self._job_errors)
                service_group.cancel_scope.cancel()
        finally:
            await self._withdraw()
            with anyio.CancelScope(shield=True):
                await self.runner.aclose()
            if self.watchdog is not None:
                self.watchdog.stop()
            if unwatch is not None:
                unwatch()
            self.host.local_runs.detach(self)
            logger.info(
                "worker %s stopped after %d job(s)",
                self.id,
                self._finished,
                extra={"action": "worker_stopped", "worker": {"id": self.id}},
            )
        return self._finished

    async def _claim_loop(self, jobs: TaskGroup) -> None:
        """Claim jobs into the buffer and start those admitted, until stopped."""
        self._jobs_group = jobs
        while not self._stopping.is_set():
            await self._start_admitted()
            if not self._may_claim():
                # Refill the buffer in batches, not one job per freed slot: a claim is a
                # round trip (and a write) whatever its size, and under load claims of one
                # or two jobs cost more than the jobs (docs/benchmarks.md, "--processes").
                await self._wait_slot(for_room=True)
                continue
            room = self.concurrency + self.prefetch - self._slots - len(self._buffer)
            at_limit = self._tasks_at_limit()
            busy = bool(self._runs or self._buffer)
            claims = await self._claim(room, at_limit)
            if claims is None:
                continue  # the store failed; _claim waited out the backoff
            if self._stopping.is_set():
                # Stopped while the claim was in flight: hand these back unstarted.
                await self._release_unstarted(claims)
                return
            if claims:
                self._buffer.extend(claims)
                if len(claims) >= room or self.burst:
                    continue
                # Fewer than asked: the queue had no more. Start these, then wait for work
                # (which looks for due jobs first) rather than claim again at once: an
                # empty claim is a write, and one per trickled job (docs/benchmarks.md).
                await self._start_admitted()
                if self._buffer or self._tasks_at_limit():
                    continue
            if not await self._wait_for_work(at_limit, busy=busy):
                return

    async def _claim(self, room: int, exclude: set[str]) -> list[Claim] | None:
        """Claim up to ``room`` jobs; ``None`` if the store failed (after a backoff)."""
        # ``rates`` only when a task has one: a store without rate limits is still served.
        rates: dict[str, Any] = {"rates": found} if (found := rate_limits(self.host.tasks)) else {}
        backend = self.host.backend
        if not self._buffer and self._solo is None and self._claim_begins:
            # The jobs that will start at once may begin in the claim's own round trip.
            rates["begin"] = self.concurrency - self._slots
        try:
            claims = await backend.claim(
                self.id,
                queues=self.queues,
                limit=room,
                lease_ttl=self.lease_ttl,
                exclude_tasks=exclude,
                limits=flow_limits(self.host.tasks) or None,
                **rates,
            )
        except Exception as exc:
            self._claim_failures += 1
            delay = reconnect_delay(self._claim_failures, random.random())
            self._outage.failed("claim", exc, retry_in=delay)
            await self._idle(delay, wait_for_work=False)
            return None
        self._claim_failures = 0
        self._outage.succeeded()
        return list(claims)

    async def _wait_for_work(self, at_limit: set[str], *, busy: bool = False) -> bool:
        """Nothing was claimed: wait for a reason to claim again; ``False`` ends a burst.

        ``busy``: jobs of this worker were running when the claim began. The claim may have
        passed over jobs at a fleet-wide limit because of them, and they may have ended
        while it ran: a burst then claims once more before it concludes nothing is left.
        """
        if self.burst:
            if not self._runs and not self._buffer:
                return busy
            await self._wait_slot()
        elif at_limit or self._buffer:
            # Work may be waiting only for tasks at their limit: wait_for_work would
            # return at once and spin. Wait for one of our jobs to end instead.
            with self.host.clock.move_on_after(self.host.config.poll_interval):
                await self._wait_slot()
        else:
            await self._idle(self.host.config.poll_interval, wait_for_work=True)
        return True

    def _local_limit(self, task_name: str) -> int | None:
        task = self.host.tasks.get(task_name)
        return task.opts.local_concurrency if task is not None else None

    def _tasks_at_limit(self) -> set[str]:
        """Tasks of which this worker runs as many jobs as their ``local_concurrency`` allows."""
        return {
            name
            for name, count in self._per_task.items()
            if (limit := self._local_limit(name)) is not None and count >= limit
        }

    # -- admission -----------------------------------------------------------------------

    def _admit(self, claim: Claim, admitting: Sequence[Claim]) -> _Admission:
        """May this claimed job start now, beside the running jobs and ``admitting``?

        The one place where start rules live. A job not admitted stays buffered (leased,
        heartbeated, cancellable) and is offered again when a job ends.

        * A job that was running on a worker that died (``recoveries > 0``) may have
          killed it: it runs alone, so that if it kills this worker too, no job beside
          it is charged for the crash. Until the running jobs end, nothing queued behind
          it starts either (it would wait forever under a steady load).
        * A job claimed again while its last attempt's run has not ended yet (its outcome
          written, a retry due at once) waits for that run to end.
        * A task's ``local_concurrency`` caps its running jobs in this process; jobs of
          other tasks may pass it. (Its fleet-wide ``concurrency`` is enforced by the
          store when it claims: a claimed job is within it.)
        """
        job = claim.job
        if job.id in self._runs:
            # Claimed again (a retry due at once) before its last attempt's run ended: that
            # run still writes or reads its outcome. One run per job: it starts after that.
            return _Admission.HOLD
        if job.recoveries > 0:
            # Not beside a job whose outcome is still being written either: were this one
            # to kill the worker, that job would be charged for the crash.
            alone = self._slots == 0 and not self._runs and not admitting
            return _Admission.START if alone else _Admission.BLOCK
        limit = self._local_limit(job.task)
        if limit is None:
            return _Admission.START
        same = self._per_task[job.task] + sum(1 for o in admitting if o.job.task == job.task)
        return _Admission.START if same < limit else _Admission.HOLD

    def _admitted(self) -> list[Claim]:
        """Take out of the buffer, in claim order, the jobs admitted into free slots."""
        free = self.concurrency - self._slots
        admitted: list[Claim] = []
        held: list[Claim] = []
        while self._buffer and len(admitted) < free and self._solo is None:
            claim = self._buffer.popleft()
            verdict = self._admit(claim, admitted)
            if verdict is _Admission.START:
                admitted.append(claim)
                if claim.job.recoveries > 0:
                    break  # it runs alone
                continue
            held.append(claim)  # waits for a running job to end
            if verdict is _Admission.BLOCK:
                break
        self._buffer.extendleft(reversed(held))
        return admitted

    async def _start_admitted(self) -> None:
        """Start every buffered job the admission step lets through.

        The jobs started before the first of them runs are begun by one store call
        (:meth:`_begin`).
        """
        if not self._buffer or self._jobs_group is None or self._stopping.is_set():
            return  # the common case as a job ends: nothing buffered
        for claim in self._admitted():
            self._start(self._jobs_group, claim)

    async def _drop_buffered(self, lost: Collection[str], cancel: Collection[str]) -> None:
        """Take prefetched jobs out of the buffer: lost ones silently, cancelled ones ended."""
        keep: deque[Claim] = deque()
        cancelled: list[Claim] = []
        for claim in self._buffer:
            if claim.job.id in lost:
                continue
            (cancelled if claim.job.id in cancel else keep).append(claim)
        self._buffer = keep
        for claim in cancelled:
            error = JobError.from_message("afterwork.Cancelled", "cancelled before it started")
            try:
                await self.host.backend.finish(claim.lease, Outcome.cancelled(error))
            except Exception:
                logger.warning("could not record the cancel of job %s", claim.job.id, exc_info=True)

    async def _release_unstarted(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            try:
                await self.host.backend.finish(claim.lease, Outcome.released())
            except Exception:
                logger.warning(
                    "job %s could not be released; it will be recovered when its lease expires",
                    claim.job.id,
                    exc_info=True,
                    extra=log_extra("job_release_failed", claim.job, self.id),
                )

    def _start(self, jobs: TaskGroup, claim: Claim) -> None:
        new_scope = self._new_scope
        job = claim.job
        run = JobRun(claim, new_scope(), on_recording=self._free_slot)
        # The jobs started before the first of them runs are begun by one store call,
        # where the store's begin of a list is one write (else each begins itself).
        batch: _BeginBatch | None = None
        index = 0
        if self._begins_together:
            batch = self._begins
            if batch is None:
                batch = self._begins = _BeginBatch()
            index = len(batch.runs)
            batch.runs.append(run)
        if job.recoveries > 0:
            self._solo = job.id
        self._runs[job.id] = run
        self._per_task[job.task] += 1
        self._slots += 1
        self._started += 1
        # A plain asyncio task, not one of ``jobs``: an anyio task costs some 30 µs more to
        # start and end (a wrapper coroutine, a task state in a weak dictionary, a done
        # callback), a fifth of a no-op job's CPU. ``run`` joins them as the group would:
        # waits for them, cancels them through their scope if it is cancelled (a shielded
        # cleanup still runs to its end), and a task's error stops it.
        scope = new_scope()
        task = asyncio.get_running_loop().create_task(
            self._run_scoped(run, scope, batch, index), name=JOB_TASK_PREFIX + job.id
        )
        self._job_tasks[task] = scope

    async def _run_scoped(
        self, run: JobRun, scope: anyio.CancelScope, batch: _BeginBatch | None, index: int
    ) -> None:
        # The task takes itself out of ``_job_tasks`` as it ends (rather than in a done
        # callback: one loop turn per job less); ``_join_jobs`` sweeps any that never ran.
        try:
            with scope:
                await self._run_one(run, batch, index)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # escaped _run_one: stop the worker, as its group would
            self._job_failed(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise  # out of the loop too, as from any task
        finally:
            self._job_tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]

    def _job_failed(self, exc: BaseException) -> None:
        self._job_errors.append(exc)
        if self._jobs_group is not None:
            self._jobs_group.cancel_scope.cancel()
            self._jobs_group = None  # no job starts any more

    def _job_done(self, task: asyncio.Task[None]) -> None:
        """A job's task that ended without taking itself out (cancelled before it ran)."""
        self._job_tasks.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._job_failed(exc)

    async def _join_jobs(self, *, cancel: bool) -> None:
        """Wait for the jobs' tasks to end; ``cancel``: cancel them until they do."""
        while self._job_tasks:
            if cancel:
                for scope in self._job_tasks.values():
                    scope.cancel()
            await asyncio.wait(set(self._job_tasks))
            for task in [task for task in self._job_tasks if task.done()]:
                self._job_done(task)

    async def _run_one(self, run: JobRun, batch: _BeginBatch | None, index: int) -> None:
        job = run.job
        try:
            if not await self._begin(run, batch, index):
                return
            job = run.job
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "job %s (%s) started",
                    job.id,
                    job.task,
                    extra=log_extra("job_started", job, self.id),
                )
            try:
                await self.runner.run_claim(run)
            except Exception:
                # The store failed while recording the outcome: the lease will expire and
                # the job will run again (at-least-once). Never let it kill the worker.
                logger.exception(
                    "job %s (%s): could not record its outcome; it will be recovered",
                    job.id,
                    job.task,
                    extra=log_extra("job_record_failed", job, self.id),
                )
            if run.reason == LOST:
                self._lost += 1
            self._finished += 1
        finally:
            if self._solo == job.id:
                self._solo = None
            del self._runs[job.id]
            self._per_task[job.task] -= 1
            if self._per_task[job.task] <= 0:
                del self._per_task[job.task]
            if run.thread_done is not None and not run.thread_done.is_set():
                # A sync job timed out or was cancelled, but its thread still runs: keep
                # its slot until it returns, so runaway threads cannot pile up. On
                # shutdown we stop waiting for it.
                await self._wait_overrun(run)
            if not run.slot_freed:
                self._slots -= 1
            if self._buffer:
                await self._start_admitted()
            self._notify_slot()

    async def _free_slot(self, run: JobRun) -> None:
        """The attempt is over and only its outcome's write is left: free its slot now.

        The jobs started here mark themselves begun before the write is flushed, so their
        starts share its group commit rather than wait a round trip for the next one. The
        job itself stays in ``_runs`` and ``_per_task`` (local limits, draining, shutdown)
        until the write returns; a sync job whose thread still runs keeps its slot.
        """
        if run.thread_done is not None and not run.thread_done.is_set():
            return
        run.slot_freed = True
        self._slots -= 1
        if self._buffer:
            await self._start_admitted()
        self._notify_slot()

    async def _wait_overrun(self, run: JobRun) -> None:
        """Hold the slot of a sync job whose thread outlived its attempt, saying so."""
        job, done = run.job, run.thread_done
        assert done is not None
        logger.warning(
            "job %s (%s) is over, but its thread still runs: a thread cannot be stopped, so it "
            "keeps its slot until it returns (isolation='process' makes the timeout hard)",
            job.id,
            job.task,
            extra=log_extra("job_thread_overrun", job, self.id),
        )
        started = anyio.current_time()
        await _first(done, self._stopping)
        if done.is_set():
            logger.warning(
                "job %s (%s): its thread returned %.1fs after the attempt ended; slot freed",
                job.id,
                job.task,
                anyio.current_time() - started,
                extra=log_extra("job_thread_returned", job, self.id),
            )

    async def _begin(self, run: JobRun, batch: _BeginBatch | None, index: int) -> bool:
        """Mark the attempt started in the store before any of its code runs.

        A job is charged for a worker's death only once this returned, so the mark must
        be durable first. ``False`` when the lease was lost meanwhile (nothing to run).
        The first job of ``batch`` to run begins them all in one store call (a future and
        a store entry per batch, not per job); the others wait for its answer.
        """
        if batch is None:
            answer = await self._begin_store((run,))
        elif not batch.sent:
            batch.sent = True
            if self._begins is batch:
                self._begins = None  # jobs started from now on: the next batch
            try:
                batch.started = await self._begin_store(batch.runs)
            finally:
                batch.over = True
                if batch.done is not None:
                    batch.done.set()
        elif not batch.over:
            if batch.done is None:
                batch.done = asyncio.Event()
            await batch.done.wait()
        if batch is not None:
            answer = batch.started
        if answer is None:  # the store failed (logged), or the call was cancelled
            run.reason = LOST
            return False
        started = answer[index]
        if started is None:
            run.reason = LOST
            self._lost += 1
            return False
        run.claim = make_claim(started, run.claim.token)
        return True

    async def _begin_store(self, runs: Sequence[JobRun]) -> list[Job | None] | None:
        """The store's ``begin`` of ``runs``; ``None`` (each logged) if it failed."""
        try:
            return await self.host.backend.begin([run.claim.lease for run in runs])
        except Exception:
            for run in runs:
                logger.warning(
                    "job %s (%s) could not be started; it will be recovered when its lease expires",
                    run.job.id,
                    run.job.task,
                    exc_info=True,
                    extra=log_extra("job_begin_failed", run.job, self.id),
                )
            return None

    async def _shutdown(self) -> None:
        if self._buffer:
            # Prefetched but never started: back to the queue untouched, at once.
            unstarted, self._buffer = list(self._buffer), deque()
            await self._release_unstarted(unstarted)
        if self._runs:
            logger.info(
                "worker %s stopping: waiting up to %gs for %d running job(s)",
                self.id,
                self.grace,
                len(self._runs),
                extra={"action": "worker_stopping", "worker": {"id": self.id}},
            )
        with anyio.move_on_after(self.grace):
            while self._runs:
                await self._wait_slot()
        for run in list(self._runs.values()):
            logger.warning(
                "job %s (%s) did not finish within the grace period; released",
                run.job.id,
                run.job.task,
                extra=log_extra("job_released", run.job, self.id),
            )
            run.stop(SHUTDOWN)

    # -- waiting -------------------------------------------------------------------------

    def _may_claim(self) -> bool:
        """Whether the buffer has room for a claim (a batch of them, while jobs wait in it)."""
        room = self.concurrency + self.prefetch - self._slots - len(self._buffer)
        return room > 0 and (not self._buffer or room >= self._claim_batch)

    def _notify_slot(self) -> None:
        if not self._slot_awaited:
            return  # nobody waits: no new Event per job (a worker's hot path)
        if self._for_room and not self._may_claim():
            return  # the claim loop would only wait again: a wake-up per job saved
        self._slot_awaited = False
        self._slot_freed.set()
        self._slot_freed = anyio.Event()

    async def _wait_slot(self, *, for_room: bool = False) -> None:
        """Wait until a job's slot is freed (``for_room``: until a claim has room)."""
        event = self._slot_freed
        self._slot_awaited = True
        self._for_room = for_room
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if self._stopping.is_set() and not self._runs:
                return
            await event.wait()
        self._idle_scope = None

    async def _idle(self, timeout: float, *, wait_for_work: bool) -> None:
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if self._stopping.is_set():
                return
            if wait_for_work:
                # The store waits in real time; a fake clock also ends the wait.
                with self.host.clock.move_on_after(timeout):
                    await self.host.backend.wait_for_work(self.queues, timeout)
            else:
                await self.host.clock.sleep(timeout)
        self._idle_scope = None

    # -- background loops ----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        presence = self._presence()
        started = self.host.backend.now()
        while True:
            if presence is not None:
                await self._announce(presence, started)
            await self.host.clock.sleep(self.heartbeat_interval)
            await self._heartbeat()

    def _presence(self) -> WorkerPresence | None:
        """Where this worker shows itself (not in burst mode: a drain is not a worker)."""
        backend = self.host.backend
        return backend if not self.burst and isinstance(backend, WorkerPresence) else None

    async def _announce(self, presence: WorkerPresence, started: float) -> None:
        now = self.host.backend.now()
        info = WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            queues=None if self.queues is None else tuple(self.queues),
            concurrency=self.concurrency,
            running=tuple(self._runs),
            started_at=started,
            last_seen=now,
            expires_at=now + self.lease_ttl,
            services=self._services(),
        )
        try:
            await presence.announce_worker(info)
        except Exception:  # advisory: the outage, if any, is logged by the heartbeat
            logger.debug("worker %s could not announce itself", self.id, exc_info=True)

    async def _withdraw(self) -> None:
        presence = self._presence()
        if presence is None:
            return
        with anyio.move_on_after(5, shield=True):
            try:
                await presence.remove_worker(self.id)
            except Exception:  # it expires with its lease anyway
                logger.debug("worker %s could not withdraw itself", self.id, exc_info=True)

    async def _heartbeat(self) -> None:
        """Renew the leases of running and buffered jobs; stop those lost or cancelled."""
        runs = [run for run in self._runs.values() if run.reason is None]
        leases = [run.claim.lease for run in runs] + [c.lease for c in self._buffer]
        if not leases:
            return
        try:
            reply = await self.host.backend.heartbeat(leases, lease_ttl=self.lease_ttl)
        except Exception as exc:
            self._outage.failed("heartbeat", exc)
            return
        self._outage.succeeded()
        if reply.lost or reply.cancel:
            await self._drop_buffered(reply.lost, reply.cancel)
        apply_heartbeat(reply, self._runs, self.id)

    async def _reaper_loop(self) -> None:
        backend = self.host.backend
        config = self.host.config
        # Start at a random point in the interval so a fleet does not reap in lockstep.
        await self.host.clock.sleep(config.reaper_interval * random.random())
        while True:
            try:
                recovered = await backend.recover_expired(max_recoveries=config.max_recoveries)
                for job in recovered:
                    self._recovered += 1
                    logger.warning(
                        "job %s (%s) was recovered from a dead worker (%s)",
                        job.id,
                        job.task,
                        job.status.value,
                        extra=log_extra("job_recovered", job, self.id),
                    )
                if isinstance(backend, Inspector):
                    await backend.purge()
            except Exception as exc:
                self._outage.failed("reaper", exc)
            else:
                self._outage.succeeded()
            await self.host.clock.sleep(config.reaper_interval)
