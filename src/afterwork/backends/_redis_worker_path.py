"""The Redis store's worker path: start, claim, begin, heartbeat, finish (starts and
finishes issued together share one script call), progress and the recovery of expired
leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from .. import _lifecycle as life
from .._notify import Notifier
from ..job import Job, JobStatus
from ._redis_scripts import (
    FIELDS,
    MALFORMED,
    SCRIPTS,
    TOKEN,
    MalformedRecord,
    Script,
    Timelines,
    change_item,
    fmt,
    job_args,
    parse_job,
    record_fields,
    remember_timeline,
    stored_as,
    unreadable_job,
)
from .base import Claim, FlowLimit, HeartbeatReply, Lease, NewJob, Outcome, RateLimit

__all__ = ("WorkerPathMixin",)

logger: logging.Logger = logging.getLogger("afterwork.backends.redis")

_FINISH_BATCH = 256


@dataclass
class _Write:
    """A start (``outcome`` is ``None``: one or more leases) or a finish (one lease)."""

    leases: list[Lease]
    outcome: Outcome | None
    future: asyncio.Future[Any]


class WorkerPathMixin:
    """The claim-to-finish methods of :class:`~afterwork.backends.redis.RedisBackend`."""

    if TYPE_CHECKING:
        _held: dict[str, tuple[str, Job]]
        _writes: list[_Write]
        _flusher: asyncio.Task[None] | None
        _timelines: Timelines
        _wake: Notifier
        _subscribed: asyncio.Event
        _cancel_callbacks: list[Callable[[str], object]]
        _connect_timeout: float
        _finish_retry_for: float

        def now(self) -> float: ...

        def _key(self, name: str) -> str: ...

        async def _command(self, *args: Any, retry_for: float | None = None) -> Any: ...

        async def _eval(
            self, script: Script, *args: str, retry_for: float | None = None, replay: int = -1
        ) -> Any: ...

        def _parse(self, record: list[Any], job_id: str | None = None) -> Job: ...

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        token = os.urandom(16).hex()
        record = await self._eval(
            SCRIPTS["start"], worker, repr(float(lease_ttl)), token, *job_args(job)
        )
        claim = Claim(self._parse(record), token)
        self._held[claim.job.id] = (token, claim.job)
        return claim

    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        exclude_tasks: Collection[str] = (),
        limits: Mapping[str, FlowLimit] | None = None,
        rates: Mapping[str, RateLimit] | None = None,
    ) -> list[Claim]:
        if limit <= 0:
            return []
        if self._cancel_callbacks and not self._subscribed.is_set():
            # Claim only once cancel requests for the claimed jobs can reach us.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self._connect_timeout)
        names = list(queues or ())
        # Fleet-wide limits: claim_flow.lua, the same claim passing over full groups.
        # Rate limits too: the script keeps each group's starts (P:starts:<group>).
        limited = bool(limits or rates)
        flow: list[str] = []
        if limited:
            flow = [str(len(exclude_tasks)), *exclude_tasks, str(len(limits or {}))]
            for task, cap in (limits or {}).items():
                flow += [task, str(cap.limit), cap.key or ""]
            for task, rate in (rates or {}).items():
                flow += [task, str(rate.limit), repr(float(rate.per)), rate.key or ""]
        reply = await self._eval(
            SCRIPTS["claim_flow" if limited else "claim"],
            worker,
            repr(float(lease_ttl)),
            str(limit),
            os.urandom(8).hex() + "-",
            str(len(names)),
            *names,
            *(flow or exclude_tasks),
            retry_for=0.0,  # a lost reply must not claim twice; the worker loop retries
        )
        skipped, records = reply[0], reply[1]
        self._skipped = bool(skipped)
        next_at = reply[2] if len(reply) > 2 else b""
        next_at = next_at.decode() if isinstance(next_at, bytes) else str(next_at)
        self._rate_next = float(next_at) if next_at else None
        claims: list[Claim] = []
        for record in records:
            try:
                claim = Claim(parse_job(record, self._timelines), record[TOKEN])
            except MalformedRecord as exc:
                await self._quarantine_claimed(record, str(exc))
                continue
            self._held[claim.job.id] = (claim.token, claim.job)
            claims.append(claim)
        return claims

    async def _quarantine_claimed(self, record: list[Any], reason: str) -> None:
        logger.error(
            "job %s has a malformed record (%s); failed as %s",
            record[0],
            reason,
            MALFORMED,
            extra={"action": "job_malformed", "job": {"id": record[0]}},
        )
        job = unreadable_job(record[0], record, reason)
        change = life.quarantine(
            replace(job, status=JobStatus.RUNNING), now=self.now(), reason=reason
        )
        expect = {"status": "running", "token": record[TOKEN]}
        await self._apply([change_item("quarantine", change, expect=expect)])

    # -- applying what the lifecycle decided ---------------------------------------------

    async def _apply(self, items: list[dict[str, Any]], *, retry_for: float | None = None) -> Any:
        """Run ``apply.lua`` on changes computed by :mod:`afterwork._lifecycle`."""
        return await self._eval(SCRIPTS["apply"], to_json(items).decode(), retry_for=retry_for)

    async def _read(self, job_id: str) -> tuple[Job, dict[str, Any]] | None:
        """A job and its raw fields (token included), or ``None`` if absent or unreadable."""
        record = await self._command("HMGET", self._key(f"job:{job_id}"), *FIELDS)
        if record[0] is None and record[3] is None:
            return None
        try:
            return parse_job(record), record_fields(record)
        except MalformedRecord:
            return None

    async def _held_job(self, lease: Lease) -> tuple[Job, str | None] | None:
        """The job ``lease`` is about, as this process last saw it under that lease."""
        cached = self._held.get(lease.job_id)
        if cached is not None and cached[0] == lease.token:
            return cached[1], cached[0]
        read = await self._read(lease.job_id)
        if read is None:
            return None
        job, raw = read
        return job, raw["token"]

    async def begin(self, leases: Sequence[Lease]) -> list[Job | None]:
        if not leases:
            return []
        # Starts ride in the same script call as the finishes and starts asked for in the
        # same loop turn: a slot freed by a finish is usually taken by a start at once.
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.append(_Write(list(leases), None, future))
        self._kick_writes()
        begun: list[Job | None] = await future
        return begun

    def _kick_writes(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_writes())

    async def _flush_writes(self) -> None:
        """Send the pending starts and finishes, a batch per script call (group commit).

        Each is still fenced by its own token, and a repeat of an applied one writes nothing
        (a start finds the attempt started, a finish returns its record): safe to retry, for
        ``finish_retry_for`` when the batch holds a finish, ``retry_for`` otherwise.
        """
        # One loop turn first: the jobs that end in this turn free their slots before their
        # finishes are queued, and the starts of the jobs that take them join this batch.
        await asyncio.sleep(0)
        while self._writes:
            batch = self._writes[:_FINISH_BATCH]
            del self._writes[:_FINISH_BATCH]
            try:
                items, where, computed = await self._write_items(batch)
                retry_for = (
                    self._finish_retry_for if any(w.outcome is not None for w in batch) else None
                )
                reply = await self._apply(items, retry_for=retry_for) if items else []
            except Exception as exc:
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
                continue
            results: list[list[Job | None]] = [[None] * len(w.leases) for w in batch]
            finished = False
            for (b, i), record, change in zip(where, reply, computed, strict=True):
                if record == 0:
                    continue
                # The job the lifecycle computed, if the store holds exactly it (one
                # record less to decode per start and finish), else the record read back.
                fresh = change.event is not None and stored_as(record, change.job)
                job = change.job if fresh else self._parse(record)
                results[b][i] = job
                if batch[b].outcome is None:
                    self._held[job.id] = (batch[b].leases[i].token, job)
            for write, result in zip(batch, results, strict=True):
                if write.outcome is not None:
                    finished = True
                    self._held.pop(write.leases[0].job_id, None)
                if not write.future.done():
                    write.future.set_result(result if write.outcome is None else result[0])
            if finished:
                self._wake.notify()

    async def _write_items(
        self, batch: list[_Write]
    ) -> tuple[list[dict[str, Any]], list[tuple[int, int]], list[life.Change]]:
        """``apply.lua`` items for ``batch``, which write and lease each one is for, and
        the change each one writes."""
        # At the scripts' precision (%.6f): the jobs computed here then read back exactly
        # as stored, and need not be decoded from the reply (``stored_as``).
        now = fmt(self.now())
        items: list[dict[str, Any]] = []
        where: list[tuple[int, int]] = []
        computed: list[life.Change] = []
        for b, write in enumerate(batch):
            for i, lease in enumerate(write.leases):
                held = await self._held_job(lease)
                if held is None:
                    continue
                job, token = held
                if write.outcome is None:
                    change = life.begin(job, held=token, token=lease.token, now=now)
                    if change is None:
                        continue
                    expect: dict[str, str | None] = {"status": "running", "token": lease.token}
                    if change.event is not None:
                        expect["started"] = None
                    # Begun already under this lease: the item writes what is there.
                    items.append(change_item("begin", change, expect=expect))
                    remember_timeline(
                        self._timelines, items[-1]["set"].get("tl"), change.job.timeline
                    )
                else:
                    change = life.finish(
                        job, held=token, token=lease.token, outcome=write.outcome, now=now
                    )
                    if change is None:
                        continue
                    expect = {"status": "running", "token": lease.token}
                    items.append(change_item("finish", change, expect=expect, done=lease.token))
                    remember_timeline(
                        self._timelines, items[-1]["set"].get("tl"), change.job.timeline
                    )
                where.append((b, i))
                computed.append(change)
        return items, where, computed

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply()
        args = [repr(float(lease_ttl))]
        for lease in leases:
            args.extend((lease.job_id, lease.token))
        lost, cancel = await self._eval(SCRIPTS["heartbeat"], *args)
        for job_id in lost:
            self._held.pop(job_id, None)
        return HeartbeatReply(lost=frozenset(lost), cancel=frozenset(cancel))

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        status = outcome.status
        if status not in (
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.SCHEDULED,
            JobStatus.QUEUED,
        ):
            raise ValueError(f"not an outcome: {status!r}")
        # Finishes issued together (a batch of jobs ending in the same loop turn) share one
        # script call with the starts asked for meanwhile: group commit, with each one still
        # fenced by its own token.
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.append(_Write([lease], outcome, future))
        self._kick_writes()
        job: Job | None = await future
        if job is not None and (status is not JobStatus.SUCCEEDED or self._skipped):
            self._wake.notify()  # a slot or a concurrency-limited task may be free now
        return job

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        reply = await self._eval(
            SCRIPTS["progress"],
            lease.job_id,
            lease.token,
            repr(float(progress)),
            message or "",
            "0" if message is None else "1",
        )
        return bool(reply)

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        recovered: list[Job] = []
        while True:
            now, records = await self._eval(SCRIPTS["expired"], "500")
            items: list[dict[str, Any]] = []
            for record in records:
                try:
                    job = parse_job(record)
                except MalformedRecord as exc:
                    await self._quarantine_claimed(record, str(exc))
                    continue
                change = life.recover(job, now=float(now), max_recoveries=max_recoveries)
                raw = record_fields(record)
                # Applied only if the lease is still the expired one that was read.
                expect = {name: raw[name] for name in ("status", "token", "lease", "cancel")}
                expect["started"] = raw["started"]
                items.append(change_item("recover", change, expect=expect))
            if items:
                reply = await self._apply(items)
                recovered.extend(self._parse(r) for r in reply if r != 0)
            if len(records) < 500:
                return recovered
