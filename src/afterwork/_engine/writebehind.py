"""Write-behind of the jobs of plain callables (``Jobs.add_task(plain_fn)``).

A plain callable runs in this process after the response; recording it used to cost two
store transactions around a call that takes microseconds (the row created already
claimed, then its outcome). Here its record is kept in memory while it runs and written
later, by one flusher per event loop, in groups: a job that ended by the time the
flusher takes it is written once (created, started and ended, with the times it really
had, its events in order) in the same transaction as the others of its group. A job still
running after :data:`START_AFTER` seconds has its start written on its own, so a long
job shows as running to every process (and heartbeats, cancels from elsewhere and
recovery work as for any job); its outcome is then written as usual.

Until its row is written, this process serves the job from memory (``aw.get_job``,
``aw.cancel``, ``aw.join``). What a crash loses: the jobs of plain callables not yet
written (at most the last few milliseconds of them, or a job that ran for less than
:data:`START_AFTER`), which were never durable: their arguments lived only in memory,
and a plain callable is never run again. A registered task never goes through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .. import _lifecycle as life
from .._records import maker
from ..backends.base import Claim, Lease, NewJob, Outcome
from ..job import Job, JobStatus

if TYPE_CHECKING:
    from .host import Host

__all__ = ("START_AFTER", "LocalRecord", "WriteBehind", "WritesBehind", "local_changes")

logger: logging.Logger = logging.getLogger("afterwork.fastapi._jobs")

#: Seconds a plain callable may run before its start is written on its own.
START_AFTER = 0.05

#: Seconds the flusher waits after a job ended, so the jobs ending together share a write.
LINGER = 0.02

#: Records written at once on a store without ``write_local`` (each its own calls).
GENERIC_CONCURRENCY = 8

#: Records written in one transaction at most.
BATCH = 500


@dataclass(slots=True)
class LocalRecord:
    """A job run here whose row is not written yet: how it started, and how it ended."""

    new: NewJob
    worker: str
    token: str
    lease_ttl: float
    started_at: float
    job: Job
    """The job as it ran (started, and asked to cancel if it was): :meth:`current` is the
    job as it is now."""
    outcome: Outcome | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    began: float = 0.0
    """``loop.time()`` when it began (when its start is due to be written)."""
    writing: asyncio.Event | None = None
    """Set while the start of this running job is being written (its end waits for it)."""
    ended: Job | None = None
    """The ended job, once asked for (built on demand: most are only ever written)."""

    def current(self) -> Job:
        """The job as it is now: running, or ended with its ``outcome``."""
        if self.outcome is None or self.finished_at is None:
            return self.job
        ended = self.ended
        if ended is None:
            token = self.token
            change = life.finish(
                self.job, held=token, token=token, outcome=self.outcome, now=self.finished_at
            )
            assert change is not None  # the record's own token, and its job running
            ended = self.ended = change.job
        return ended


@runtime_checkable
class WritesBehind(Protocol):
    """A store that writes a group of local records in one transaction (optional)."""

    async def write_local(self, records: Sequence[LocalRecord]) -> None:
        """Create each record's job started at ``started_at`` (already claimed by
        ``worker`` with ``token``) and, if it has an ``outcome``, end it at
        ``finished_at``: the same rows and events as ``start`` then ``finish``."""
        ...


class WriteBehind:
    """The unwritten jobs of the plain callables this process runs, and their flusher."""

    def __init__(
        self, host: Host, worker: str, on_written: Callable[[str, str], None] | None = None
    ) -> None:
        self.host = host
        self.worker = worker
        self._on_written = on_written  # (job id, the store's token) of a running job written
        self._lock: asyncio.Lock | None = None
        self._records: dict[str, LocalRecord] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._written = 0

    # -- the runner's side ---------------------------------------------------------------

    def usable(self) -> bool:
        """Whether a job may start unwritten here (on this loop; otherwise, written at once)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always called from a coroutine
            return False
        if (
            self._loop is None
            or self._loop.is_closed()
            or (self._flusher is not None and self._flusher.done() and not self._records)
        ):
            self._loop = loop
        return self._loop is loop

    def begin(self, new: NewJob, lease_ttl: float) -> Claim:
        """Start ``new`` here, unwritten: its claim, decided in memory."""
        now = self.host.backend.now()
        job = started_job(new, self.worker, now, lease_ttl)
        token = os.urandom(16).hex()
        loop = self._loop or asyncio.get_running_loop()
        record = LocalRecord(new, self.worker, token, lease_ttl, now, job, began=loop.time())
        self._records[new.id] = record
        self._ensure_flusher()
        if self._timer is None:
            self._timer = loop.call_later(START_AFTER, self._timer_fired)
        return Claim(job, token)

    async def finish(self, lease: Lease, outcome: Outcome) -> LocalRecord | Lease | None:
        """End a job started here: in memory if its row is not written yet (the flusher
        writes it; its record is returned, :meth:`LocalRecord.current` the ended job). If
        its row is written, the lease the store holds is returned instead: the caller
        writes the outcome to the store with it. ``None``: not ours to end (any more)."""
        while True:
            record = self._records.get(lease.job_id)
            if record is None:
                return lease
            if record.writing is None:
                break
            await record.writing.wait()  # its start is being written: then to the store
            lease = Lease(lease.job_id, record.token)
        return record if self.end_now(lease, outcome) else None

    def end_now(self, lease: Lease, outcome: Outcome) -> bool:
        """End an unwritten job in memory, now, if ``lease`` holds it and its start is not
        being written; ``False`` (nothing changed) otherwise.

        Only the outcome and its time are kept: the ended job is built if asked for
        (:meth:`get`), the row by the flusher.
        """
        record = self._records.get(lease.job_id)
        if (
            record is None
            or record.writing is not None
            or record.outcome is not None
            or record.token != lease.token
        ):
            return False
        record.outcome, record.finished_at = outcome, self.host.backend.now()
        record.ended = None
        if self._wake is not None:
            self._wake.set()
        return True

    # -- what the app asks ---------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job as this process knows it, if its row is not written yet."""
        record = self._records.get(job_id)
        return None if record is None else record.current()

    def record(self, job_id: str) -> LocalRecord | None:
        """The record of a job run here whose row is not written yet."""
        return self._records.get(job_id)

    def request_cancel(self, job_id: str) -> Job | None:
        """Mark an unwritten running job as asked to cancel (the caller stops its run)."""
        record = self._records.get(job_id)
        if record is None:
            return None
        if record.outcome is None:
            record.cancel_requested = True
            record.job = replace(record.job, cancel_requested=True)
        return record.current()

    @property
    def unwritten(self) -> int:
        """Jobs whose rows are not written yet (running or ended)."""
        return len(self._records)

    async def flush(self) -> None:
        """Write every record now: ended jobs whole, running ones' starts."""
        if not self._records or self._loop is not asyncio.get_running_loop():
            return
        while await self._write_some(everything=True):
            pass

    async def settle(self, timeout: float | None) -> None:
        """Wait (up to ``timeout`` seconds) until no job of this loop is unwritten: every
        local run ended and its row is written."""
        if self._loop is not asyncio.get_running_loop():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._records:
                    self._poke()
                    await asyncio.sleep(0.002)

    # -- the flusher ---------------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            loop = self._loop or asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._flusher = loop.create_task(self._run(), name="afterwork-write-behind")

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _timer_fired(self) -> None:
        self._timer = None
        self._poke()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while self._records:
            await wake.wait()
            if len(self._records) < BATCH:
                await asyncio.sleep(LINGER)
            wake.clear()
            try:
                await self._write_some(everything=False)
            except Exception:
                logger.exception(
                    "could not write the records of %d in-process job(s); retrying",
                    len(self._records),
                    extra={"action": "write_behind_failed"},
                )
                await asyncio.sleep(0.5)
                wake.set()
            if self._records and self._timer is None and self._loop is not None:
                self._timer = self._loop.call_later(START_AFTER, self._timer_fired)

    async def _write_some(self, *, everything: bool) -> bool:
        """Write the records that are due; ``True`` if some were written."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._write_due(everything=everything)

    async def _write_due(self, *, everything: bool) -> bool:
        now = asyncio.get_running_loop().time()
        due = [
            r
            for r in self._records.values()
            if r.writing is None
            and (everything or r.outcome is not None or now - r.began >= START_AFTER)
        ][:BATCH]
        if not due:
            return False
        backend = self.host.backend
        running = [r for r in due if r.outcome is None]
        for record in running:
            record.writing = asyncio.Event()
        try:
            if isinstance(backend, WritesBehind):
                await backend.write_local(due)
            else:
                await self._write_generic(due)
        except BaseException:
            for record in running:
                event, record.writing = record.writing, None
                if event is not None:
                    event.set()
            raise
        for record in due:
            # A run whose start was written and still runs: its outcome goes to the store.
            self._records.pop(record.new.id, None)
            if record.writing is not None:
                record.writing.set()
        self._written += len(due)
        return True

    async def _write_generic(self, records: Sequence[LocalRecord]) -> None:
        """Any store: ``start`` then (if it ended) ``finish``, the records concurrently."""
        backend = self.host.backend

        async def one(record: LocalRecord) -> None:
            claim = await backend.start(record.new, record.worker, lease_ttl=record.lease_ttl)
            record.token = claim.token
            if record.outcome is None and self._on_written is not None:
                self._on_written(record.new.id, claim.token)
            if record.outcome is not None:
                await backend.finish(claim.lease, record.outcome)
            elif record.cancel_requested:
                await backend.cancel(record.new.id)

        for at in range(0, len(records), GENERIC_CONCURRENCY):  # within any pool's size
            await asyncio.gather(*(one(r) for r in records[at : at + GENERIC_CONCURRENCY]))


def started_job(new: NewJob, worker: str, now: float, lease_ttl: float) -> Job:
    """The job ``life.start_now`` makes of ``new`` (no delay), built at once: created,
    claimed and started in one record (``tests/unit/test_writebehind.py`` compares them)."""
    if new.delay != 0.0:
        return life.start_now(new, worker=worker, now=now, lease_ttl=lease_ttl).job
    return _make_started(
        new.id,
        new.task,
        new.queue,
        JobStatus.RUNNING,
        list(new.args),
        dict(new.kwargs),
        new.priority,
        new.max_attempts,
        new.key,
        now,
        now + 0.0,
        new.timeout,
        new.result_ttl,
        dict(new.headers),
        worker,
        now + lease_ttl,
        1,
        now,
    )


_make_started: Callable[..., Job] = maker(
    Job,
    ("id", "task", "queue", "status", "args", "kwargs", "priority", "max_attempts", "key",
     "created_at", "run_at", "timeout", "result_ttl", "headers", "worker", "lease_expires_at",
     "attempts", "started_at"),
)  # fmt: skip


def local_changes(
    record: LocalRecord, *, now: float, exact: Callable[[float], float] = float
) -> tuple[Job, life.Change | None]:
    """What a store writes for ``record``: its job as ``start`` creates it (at
    ``started_at``), and the change ``finish`` then writes (at ``finished_at``), or the
    cancel request ``cancel`` writes (at ``now``) if it still runs; ``None`` if neither.

    ``exact`` rounds a time as the store keeps it (so the change is computed from the job
    exactly as stored, as the generic path computes it from the store's reply).
    """
    created = started_job(record.new, record.worker, exact(record.started_at), record.lease_ttl)
    if record.outcome is not None and record.finished_at is not None:
        token = record.token
        ended = life.finish(
            created, held=token, token=token, outcome=record.outcome, now=exact(record.finished_at)
        )
        return created, ended
    if record.cancel_requested:
        return created, life.cancel(created, now=exact(now))
    return created, None
