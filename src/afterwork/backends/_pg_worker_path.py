"""The PostgreSQL store's worker path: start, claim (flow and rate limits included),
begin, heartbeat, finish (begins and finishes issued together share one transaction),
progress and the recovery of expired leases.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import asyncpg

from .. import _lifecycle as life
from ..exceptions import BackendError
from ..job import TERMINAL_STATUSES, Job, JobStatus
from ._pg_batch import claim_sql, heartbeat_sql
from ._pg_claim import claim_begin_sql
from ._pg_flow import PgGroups, read_starts, stamp_start
from ._pg_flush import Flush, flush_sql
from ._pg_host import _RETRIES, _RETRYABLE, Host
from ._pg_rows import COLS, Tx, load
from ._pg_schema import COLUMNS
from .base import Claim, FlowLimit, HeartbeatReply, Lease, NewJob, Outcome, RateLimit

T = TypeVar("T")

_FINISH_BATCH = 256
#: A begin (no outcome) or a finish waiting for the next group commit: its lease, outcome,
#: and where its result goes (its own future, or its place in a ``begin`` of several).
_Pending = tuple[Lease, Outcome | None, "asyncio.Future[Any] | _Begins", int]
#: Most leases remembered for set-based finishes (beyond: the per-row path, same result).
_HELD_MAX = 100_000
_NCOLS = len(COLUMNS)
#: A lease this close to its end (s; clocks of client and server may differ a little) is
#: not trusted to hold: the ``begin`` of a job its claim began is then written, fenced.
_HANDOUT_MARGIN = 1.0


class _Begins:
    """One ``begin`` of several leases, as one group-commit entry: one future for the
    list, each lease's result put in its place (no task nor future per lease)."""

    __slots__ = ("future", "left", "results")

    def __init__(self, future: asyncio.Future[list[Job | None]], n: int) -> None:
        self.future = future
        self.results: list[Job | None] = [None] * n
        self.left = n

    def put(self, i: int, result: Job | None) -> None:
        self.results[i] = result
        self.left -= 1
        if not self.left and not self.future.done():
            self.future.set_result(self.results)

    def done(self) -> bool:
        return self.future.done()

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(exc)


def _surely_held(job: Job, now: float) -> bool:
    """Whether the lease ``job`` was last written under cannot have expired by ``now``:
    only then may a ``begin`` hand out what the claim began without a (fenced) write."""
    expires = job.lease_expires_at
    return expires is not None and now < expires - _HANDOUT_MARGIN


def _queues_key(queues: Sequence[str] | None) -> frozenset[str] | None:
    return None if queues is None else frozenset(queues)


class WorkerPathMixin(Host):
    """The claim-to-finish methods of :class:`~afterwork.backends.postgres.PostgresBackend`."""

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        token = os.urandom(16).hex()

        async def start(tx: Tx) -> Job:
            return await tx.insert(job, worker=worker, token=token, lease_ttl=lease_ttl)

        started = await self._write(start)
        if started.status is JobStatus.RUNNING and started.worker == worker:
            self._hold(token, started)
        return Claim(started, token)

    async def _promote(self, tx: Tx) -> None:
        # The set-based form of ``life.promote`` (the status alone, no event).
        await tx.conn.execute(
            f"UPDATE {tx.jobs} SET status = 'queued' WHERE id IN (SELECT id FROM {tx.jobs}"
            " WHERE status = 'scheduled' AND run_at <= $1 FOR UPDATE SKIP LOCKED)",
            tx.now,
        )

    async def _paused(self, conn: asyncpg.Connection) -> list[str]:
        return [row[0] for row in await conn.fetch(f"SELECT queue FROM {self._s}.paused")]

    def _ready_where(
        self, queues: Sequence[str] | None, excluded: list[str], held: list[str]
    ) -> tuple[str, list[Any]]:
        where = ["status = 'queued'"]
        params: list[Any] = []
        if queues is not None:
            params.append(list(dict.fromkeys(queues)))
            where.append(f"queue = ANY(${len(params)}::text[])")
        if held:
            params.append(held)
            where.append(f"NOT (queue = ANY(${len(params)}::text[]))")
        if excluded:
            params.append(excluded)
            where.append(f"NOT (task = ANY(${len(params)}::text[]))")
        return " AND ".join(where), params

    async def _claim_rows(
        self, tx: Tx, rows: Sequence[Any], worker: str, lease_ttl: float
    ) -> list[Claim]:
        """Claim the locked ``rows`` (job columns) through ``life.claim``, in one batch."""
        claims: list[Claim] = []
        updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row in rows:
            job, problems = load(tuple(row))
            if problems:
                await tx.quarantine(job)
                continue
            token = os.urandom(16).hex()
            change = life.claim(job, worker=worker, now=tx.now, lease_ttl=lease_ttl)
            columns = tx.columns(job, change.job, token=token, lease_ttl=lease_ttl)
            updates.setdefault(tuple(columns), []).append((job.id, *columns.values()))
            claims.append(Claim(change.job, token))
            self._hold(token, change.job)
        for names, values in updates.items():
            assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, 2))
            await tx.conn.executemany(f"UPDATE {tx.jobs} SET {assignments} WHERE id = $1", values)
        return claims

    def claims_begin(self) -> bool:
        """``claim`` takes ``begin=`` (:class:`~afterwork.backends.base.ClaimBegins`)."""
        return True

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
        begin: int = 0,
    ) -> list[Claim]:
        """Claim as :meth:`Backend.claim <afterwork.backends.base.Backend.claim>` does;
        ``begin``: how many of them the worker starts at once (see ``_pg_claim``)."""
        self._after_claim = None
        if limit <= 0 or (queues is not None and not queues):
            return []
        excluded = list(exclude_tasks)
        if limits or rates:
            return await self._claim_limited(
                worker, queues, limit, lease_ttl, excluded, limits or {}, rates or {}
            )
        self._flow_skipped = self._conc_skipped = False
        self._rate_next = None
        # One statement (see ``_pg_batch``, and ``_pg_claim`` when jobs start at once):
        # due rows picked, leased (the first ``begin`` of them begun) and returned.
        begin = max(min(begin, limit), 0)
        where = ["true"]
        params: list[Any] = (
            [begin, f"events:{self.schema}", self._channel("events")] if begin else []
        )
        if queues is not None:
            params.append(list(dict.fromkeys(queues)))
            where.append(f"queue = ANY(${len(params) + 4}::text[])")
        if excluded:
            params.append(excluded)
            where.append(f"NOT (task = ANY(${len(params) + 4}::text[]))")
        make = claim_begin_sql if begin else claim_sql
        sql = make(f"{self._s}.jobs", self._s, " AND ".join(where))
        now = self.now()

        async def claim(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, worker, now, lease_ttl, limit, *params))

        # A notification after this ticket may be for a job the claim does not see.
        ticket = self._work.ticket()
        rows = await self._claiming_statement(claim)
        claims: list[Claim] = []
        began = claimed = 0
        for row in rows:
            values = tuple(row)
            if values[0] is None:
                continue  # nothing claimed: the row of ``newest`` and ``next_due`` only
            claimed += 1
            job, problems = load(values[:_NCOLS])
            token = values[_NCOLS]
            if problems:
                await self._quarantine(job)
                continue
            self._hold(token, job)
            if begin and values[_NCOLS + 1]:
                # Begun by the claim: the worker still gets the claim, and its begin the
                # begun job (``_handout``); a release before that takes the start back.
                began += 1
                self._prebegun[job.id] = token
                job = replace(job, attempts=job.attempts - 1, started_at=None)
            claims.append(Claim(job, token))
        last = rows[-1] if begin and rows else None
        if began and last is not None:
            self._pump.poke(int(last["newest"]))
            if trim := self._count_events(began):
                self._trim_later(trim)
        # Fewer than asked: no job was due in these queues when the claim looked, so the
        # idle worker's wait for work needs not look again (``wait_for_work``).
        self._after_claim = (
            (ticket, _queues_key(queues), last["next_due"])
            if last is not None and claimed < limit and not excluded
            else None
        )
        self._redeliver_cancels(claims)
        claims.sort(key=lambda c: life.ready_order(c.job))
        return claims

    async def _claiming_statement(
        self, fn: Callable[[asyncpg.Connection], Awaitable[list[Any]]]
    ) -> list[Any]:
        """A claim's statement, counted in flight (see ``_redeliver_cancels``)."""
        self._claiming += 1
        try:
            return await self._statement(fn)
        except BaseException:
            if self._claiming == 1:
                self._early_cancels = {}  # no claim of ours to tell them to
            raise
        finally:
            self._claiming -= 1

    def _redeliver_cancels(self, claims: Sequence[Claim]) -> None:
        """Cancels pushed while a claim was in flight name jobs the worker did not know it
        held yet: tell it again, once these claims are its own (after this loop turn)."""
        if not self._early_cancels:
            return
        early = self._early_cancels
        if not self._claiming:
            self._early_cancels = {}
        loop = asyncio.get_running_loop()
        for claim in claims:
            if claim.job.id in early:
                loop.call_soon(self._deliver_cancel, claim.job.id)

    async def _statement(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``fn`` (one write statement, in autocommit), retried on a deadlock or
        serialization failure; an unreachable server may have applied it."""
        for attempt in range(_RETRIES):
            try:
                with self._errors(sent=True):
                    async with self._conn() as conn:
                        return await fn(conn)
            except BackendError as exc:
                if isinstance(exc.__cause__, _RETRYABLE) and attempt + 1 < _RETRIES:
                    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _quarantine(self, claimed: Job) -> None:
        """Fail a job just claimed whose record cannot be decoded, instead of running it."""

        async def quarantine(tx: Tx) -> None:
            job = await tx.get(claimed.id)
            if job is not None and job.status is JobStatus.RUNNING:
                await tx.quarantine(job)

        await self._write(quarantine)

    def _hold(self, token: str, job: Job) -> None:
        """Remember the job this process holds the lease of, as it last wrote it."""
        if len(self._held) >= _HELD_MAX:
            self._held.clear()  # forgetting only costs the per-row path
            self._prebegun.clear()
        self._held[job.id] = (token, job)

    def _holding(self, lease: Lease) -> Job | None:
        held = self._held.get(lease.job_id)
        return held[1] if held is not None and held[0] == lease.token else None

    async def _claim_limited(
        self,
        worker: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_ttl: float,
        excluded: list[str],
        limits: Mapping[str, FlowLimit],
        rates: Mapping[str, RateLimit],
    ) -> list[Claim]:
        """A claim that passes over jobs whose flow group is at its fleet-wide limit
        (running jobs, or starts in a rate limit's window: see ``_pg_flow``).

        Claims with limits are serialized by an advisory lock, so the running jobs and
        starts they count cannot change under them; rows are then locked ``SKIP LOCKED``
        as usual, and the claimed jobs of rate-limited tasks join their groups' starts as
        pending (their begin stamps the start time).
        """

        async def claim(tx: Tx) -> list[Claim]:
            conn = tx.conn
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"flow:{self.schema}")
            groups = PgGroups(limits, rates, pg=conn, schema=self._s, now=tx.now)
            await self._promote(tx)
            for task, kwargs in await conn.fetch(
                f"SELECT task, kwargs FROM {tx.jobs} WHERE status = 'running'"
                " AND task = ANY($1::text[])",
                list(limits),
            ):
                group = groups.of(task, kwargs)
                if group is not None:
                    groups.used[group[0]] += 1
            where, params = self._ready_where(queues, excluded, await self._paused(conn))
            n = len(params)
            query = (
                f"SELECT priority, due_ms, id, {COLS} FROM {tx.jobs} WHERE {where}"
                f" ORDER BY priority DESC, due_ms, id LIMIT ${n + 1} OFFSET ${n + 2}"
            )

            async def fetch(count: int, offset: int) -> list[Any]:
                return [tuple(row) for row in await conn.fetch(query, *params, count, offset)]

            found = await groups.pick_async(fetch, limit)
            locked = {
                row[0]
                for row in await conn.fetch(
                    f"SELECT id FROM {tx.jobs} WHERE id = ANY($1::text[]) AND status = 'queued'"
                    " FOR UPDATE SKIP LOCKED",
                    [row[2] for row in found],
                )
            }
            rows = [row for row in found if row[2] in locked]
            for row in rows:
                groups.record_start(row)
            await groups.write_starts_async()
            self._flow_skipped = groups.skipped or groups.rate_next is not None
            self._conc_skipped = groups.skipped
            self._rate_next = groups.rate_next
            return await self._claim_rows(tx, [row[3:] for row in rows], worker, lease_ttl)

        return await self._write(claim)

    def rate_next(self) -> float | None:
        """When a job the last claim passed over for a rate limit may start (store time)."""
        return self._rate_next

    async def rate_starts(self, group: str, rate: RateLimit) -> list[float]:
        """The recorded starts of a rate group still within its window."""
        now = self.now()
        return await self._read(
            partial(read_starts, schema=self._s, group=group, now=now, rate=rate)
        )

    async def begin(self, leases: Sequence[Lease]) -> list[Job | None]:
        if not leases:
            return []
        if self._prebegun:
            begun = [self._handout(lease) for lease in leases]
            if all(job is not None for job in begun):
                return begun  # begun by their claim: no round trip
            rest = [lease for lease, job in zip(leases, begun, strict=True) if job is None]
            later = iter(await self._begin_here(rest))
            return [job if job is not None else next(later) for job in begun]
        return await self._begin_here(leases)

    async def _begin_here(self, leases: Sequence[Lease]) -> list[Job | None]:
        """Begin ``leases`` (none begun by its claim) in the next group commit."""
        # Starts ride in the same group commit as finishes.
        if len(leases) == 1:
            return [await self._grouped(leases[0], None)]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Job | None]] = loop.create_future()
        sink = _Begins(future, len(leases))
        self._finishes += [(lease, None, sink, i) for i, lease in enumerate(leases)]
        self._kick_flush(loop)
        return await future

    def begins_together(self) -> bool:
        """``begin`` of a list is one group-commit entry (``base.BeginsTogether``)."""
        return True

    def _handout(self, lease: Lease) -> Job | None:
        """The job its claim began, as that claim wrote it; ``None``: begin it here."""
        if self._prebegun.get(lease.job_id) != lease.token:
            return None
        del self._prebegun[lease.job_id]
        job = self._holding(lease)
        if job is None or job.started_at is None or not _surely_held(job, self.now()):
            return None
        return job

    async def _unbegin(self, lease: Lease, outcome: Outcome) -> Job | None:
        """Finish a job its claim began but the worker never started (released on a stop,
        or cancelled in the buffer): as the claim left it, with no attempt counted, no
        timeline entry, and no start time (its ``started`` event stays in the stream)."""
        self._held.pop(lease.job_id, None)

        async def unbegin(tx: Tx) -> Job | None:
            job, held = await tx.held(lease.job_id)
            if job is None or held != lease.token or job.started_at is None:
                return None
            claimed = replace(job, attempts=max(job.attempts - 1, 0), started_at=None)
            change = life.finish(claimed, held=held, token=lease.token, outcome=outcome, now=tx.now)
            if change is None:
                return None
            return await tx.save(job, change.job, kind=change.event, message=change.message)

        return await self._write(unbegin)

    async def _begin_one(self, tx: Tx, lease: Lease) -> Job | None:
        job, held = await tx.held(lease.job_id)
        change = None if job is None else life.begin(job, held=held, token=lease.token, now=tx.now)
        started = None if job is None else await tx.apply(job, change)
        if started is not None and change is not None and change.event == "started":
            assert started.started_at is not None
            await stamp_start(tx.conn, tx.schema, lease.job_id, started.started_at)
        return started

    async def heartbeat(self, leases: Sequence[Lease], *, lease_ttl: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply()
        now = self.now()
        until = now + lease_ttl
        sql = heartbeat_sql(f"{self._s}.jobs")
        ids = [lease.job_id for lease in leases]
        tokens = [lease.token for lease in leases]

        async def renew(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, until, lease_ttl, ids, tokens))

        renewed = {row[0]: bool(row[1]) for row in await self._statement(renew)}
        lost = frozenset(lease.job_id for lease in leases if lease.job_id not in renewed)
        for lease in leases:
            job = self._holding(lease)
            if lease.job_id in lost:
                self._held.pop(lease.job_id, None)
                if self._prebegun.get(lease.job_id) == lease.token:
                    del self._prebegun[lease.job_id]
            elif job is not None:
                self._held[job.id] = (lease.token, replace(job, lease_expires_at=until))
        cancel = frozenset(job_id for job_id, asked in renewed.items() if asked)
        return HeartbeatReply(lost=lost, cancel=cancel)

    async def finish(self, lease: Lease, outcome: Outcome) -> Job | None:
        status = outcome.status
        if status not in TERMINAL_STATUSES and status not in (
            JobStatus.SCHEDULED,
            JobStatus.QUEUED,
        ):
            raise ValueError(f"not an outcome: {status!r}")
        if self._prebegun.get(lease.job_id) == lease.token:
            del self._prebegun[lease.job_id]
            return await self._unbegin(lease, outcome)
        result: Job | None = await self._grouped(lease, outcome)
        if result is not None and self._flow_skipped:
            self._work.notify()  # a slot of a fleet limit is free: claim again
        return result

    async def _finish_one(self, tx: Tx, lease: Lease, outcome: Outcome) -> Job | None:
        job, held = await tx.held(lease.job_id)
        if job is None:
            return None
        change = life.finish(job, held=held, token=lease.token, outcome=outcome, now=tx.now)
        return await tx.apply(job, change)

    async def _grouped(self, lease: Lease, outcome: Outcome | None) -> Any:
        """A begin (``outcome`` ``None``) or finish, committed with the others of this turn.

        Each is still fenced by its own token; one statement (or, for leases this
        process does not remember, one transaction) commits them all.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._finishes.append((lease, outcome, future, 0))
        self._kick_flush(loop)
        return await future

    def _kick_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._finisher is None or self._finisher.done():
            self._finisher = loop.create_task(self._flush_finishes())

    async def _flush_finishes(self) -> None:
        # One loop turn first: the jobs that end in this turn free their slots before their
        # finishes are queued, and the starts of the jobs that take them join this flush.
        await asyncio.sleep(0)
        while self._finishes:
            batch, self._finishes = (
                self._finishes[:_FINISH_BATCH],
                self._finishes[_FINISH_BATCH:],
            )
            try:
                results = await self._retrying(partial(self._flush, batch))
            except Exception as exc:
                for lease, _, future, _ in batch:
                    self._held.pop(lease.job_id, None)  # it may have applied: read it back
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future, i), result in zip(batch, results, strict=True):
                if isinstance(future, _Begins):
                    future.put(i, result)
                elif not future.done():
                    future.set_result(result)

    async def _flush(self, batch: list[_Pending]) -> list[Job | None]:
        """Apply a batch of begins and finishes: one statement when this process holds
        every lease as it last wrote it (see ``_pg_flush``), else one transaction."""
        now = self.now()
        group = Flush()
        seen: set[str] = set()
        changes: list[life.Change] = []
        for lease, outcome, _, _ in batch:
            job = self._holding(lease)
            change = None
            if job is not None and lease.job_id not in seen:
                token = lease.token
                change = (
                    life.begin(job, held=token, token=token, now=now)
                    if outcome is None
                    else life.finish(job, held=token, token=token, outcome=outcome, now=now)
                )
            if change is None or change.event is None or change.message is not None:
                return await self._flush_rows(batch)  # not held, twice, or begun already
            seen.add(lease.job_id)
            changes.append(change)
            (group.begin if outcome is None else group.finish)(lease.token, change)
        sql = flush_sql(self._s)
        args = group.args(
            now, f"events:{self.schema}", self._channel("events"), self._channel("work")
        )

        async def flush(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(sql, *args)

        row = await self._statement(flush)
        finished, begun = set(row["finished"] or ()), set(row["begun"] or ())
        asked = set(row["asked"] or ())  # begun jobs whose cancel was asked meanwhile
        results: list[Job | None] = []
        again: list[_Pending] = []
        for entry, change in zip(batch, changes, strict=True):
            lease, outcome = entry[0], entry[1]
            if outcome is not None:
                self._held.pop(lease.job_id, None)
                results.append(change.job if lease.job_id in finished else None)
            elif lease.job_id in begun:
                job = change.job
                if lease.job_id in asked and not job.cancel_requested:
                    job = life.evolve(job, cancel_requested=True)  # as the row now says
                self._held[lease.job_id] = (lease.token, job)
                results.append(job)
            else:
                # Lost, or begun by an earlier try whose reply was lost: read the row.
                self._held.pop(lease.job_id, None)
                again.append(entry)
                results.append(None)
        if again:
            redone = iter(await self._flush_rows(again))
            results = [
                next(redone) if outcome is None and lease.job_id not in begun else result
                for (lease, outcome, _, _), result in zip(batch, results, strict=True)
            ]
        newest = row["newest"]
        if newest is not None:
            self._pump.poke(int(newest))
            if trim := self._count_events(len(finished) + len(begun)):
                self._trim_later(trim)
        if group.wake and finished:
            self._work.notify()
        return results

    async def _flush_rows(self, batch: list[_Pending]) -> list[Job | None]:
        """The batch in one transaction, row by row (reads each job back, locked)."""

        async def run(tx: Tx) -> list[Job | None]:
            results: list[Job | None] = []
            for lease, outcome, _, _ in batch:
                if outcome is None:
                    results.append(await self._begin_one(tx, lease))
                else:
                    results.append(await self._finish_one(tx, lease, outcome))
            return results

        results = await self._write(run)
        for (lease, outcome, _, _), job in zip(batch, results, strict=True):
            if outcome is None and job is not None:
                self._hold(lease.token, job)
            else:
                self._held.pop(lease.job_id, None)
        return results

    async def set_progress(self, lease: Lease, progress: float, message: str | None) -> bool:
        async def set_progress(tx: Tx) -> bool:
            job, held = await tx.held(lease.job_id)
            if job is None:
                return False
            change = life.progress(
                job, held=held, token=lease.token, progress=progress, message=message
            )
            return await tx.apply(job, change) is not None

        done = await self._write(set_progress)
        held = self._holding(lease)
        if held is not None:
            if done:
                moved = replace(held, progress=progress, progress_message=message)
                self._held[lease.job_id] = (lease.token, moved)
            else:
                self._held.pop(lease.job_id, None)
        return done

    async def recover_expired(self, *, max_recoveries: int) -> list[Job]:
        async def recover(tx: Tx) -> list[Job]:
            rows = await tx.conn.fetch(
                f"SELECT {COLS} FROM {tx.jobs} WHERE status = 'running'"
                " AND lease_expires_at <= $1 ORDER BY lease_expires_at, id"
                " FOR UPDATE SKIP LOCKED",
                tx.now,
            )
            recovered: list[Job] = []
            for row in rows:
                job = load(tuple(row))[0]
                if not life.lease_expired(job, tx.now):
                    continue
                change = life.recover(job, now=tx.now, max_recoveries=max_recoveries)
                back = await tx.apply(job, change)
                assert back is not None
                recovered.append(back)
            return recovered

        return await self._write(recover)
