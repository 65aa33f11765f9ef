"""The Redis store's worker path: start, claim, begin, heartbeat, finish (starts, finishes
and a claim issued together share one script call), progress and the recovery of expired
leases.

A claim may also begin the jobs the worker starts at once (``claim(begin=n)``, the optional
:class:`~afterwork.backends.base.ClaimBegins` protocol): the claim script begins the first
``n`` it claims (``begin_claimed`` in ``lua/common.lua``: the attempt counted, the start
stamped, the ``started`` event; a rate-limited job's start logged), so an idle worker's
job starts after one round trip, not two. The worker still gets claims; its ``begin``
returns the begun jobs without a write, and a claim released or cancelled before that
``begin`` is taken back to the job as it was claimed: no attempt, no timeline entry, no
start time (``_write_items``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json
from redis.exceptions import NoScriptError, ResponseError

from .. import _lifecycle as life
from .._notify import Notifier
from ..exceptions import BackendError, BackendUnavailable
from ..job import Job, JobStatus
from ._redis_enqueue import _pack
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
    hash_fields,
    job_args,
    parse_job,
    record_fields,
    remember_timeline,
    stored_as,
    unreadable_job,
)
from ._redis_topology import Topology
from .base import Claim, FlowLimit, HeartbeatReply, Lease, NewJob, Outcome, RateLimit

__all__ = ("WorkerPathMixin",)

logger: logging.Logger = logging.getLogger("afterwork.backends.redis")

_FINISH_BATCH = 256
#: A lease this close to its end (s; the client's clock may differ a little from Redis's)
#: is not trusted to hold: the ``begin`` of a job its claim began is then written, fenced.
_HANDOUT_MARGIN = 1.0


@dataclass
class _Write:
    """A start (``outcome`` is ``None``: one or more leases) or a finish (one lease)."""

    leases: list[Lease]
    outcome: Outcome | None
    future: asyncio.Future[Any]


@dataclass
class _ClaimAsk:
    """A claim waiting for the next script call: ``claim.lua`` or ``claim_flow.lua`` and
    its arguments after the prelude's three."""

    script: Script
    args: list[str]
    future: asyncio.Future[Any]


_CYCLES: dict[str, Script] = {}


def _unbegun(job: Job) -> Job:
    """A job its claim began, as the claim alone would have left it (``life.claim``): what
    the worker is handed, and what a release before it runs finishes."""
    return life.evolve(job, attempts=max(job.attempts - 1, 0), started_at=None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Nobody awaits this write: its error is logged, not left unretrieved."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("a claimed job could not be handed back", exc_info=future.exception())


def _cycle(claim: Script) -> Script:
    """``apply.lua`` then ``claim`` in one script: the flush's starts and finishes, and the
    claim asked for meanwhile, in one round trip.

    Each script's body becomes a function whose ``ARGV`` is its own: ``apply.lua`` gets
    ``ARGV[4]``, the claim ``ARGV[5]`` on as its ``ARGV[4]`` on. The finishes are applied
    first, so the claim sees the slots and flow-limit places they free. Returns
    ``{apply's reply, the claim's reply}``, the claim's error as text in its place if it
    failed (Redis does not undo the writes a failing script made before it failed).
    """
    script = _CYCLES.get(claim.name)
    if script is None:
        folder = resources.files(__package__).joinpath("lua")

        def body(name: str) -> str:
            return folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")

        source = "\n".join(
            (
                body("common"),
                "local function apply_changes(ARGV)",
                body("apply"),
                "end",
                "local function claim_jobs(ARGV)",
                body(claim.name),
                "end",
                "local claim_argv = {ARGV[1], ARGV[2], ARGV[3]}",
                "for i = 5, #ARGV do claim_argv[i - 1] = ARGV[i] end",
                "local applied = apply_changes(ARGV)",
                # A claim that fails does not fail the writes already applied: its error
                # goes back as text in its reply's place.
                "local ok, claimed = pcall(claim_jobs, claim_argv)",
                "if ok then return {applied, claimed} end",
                "if type(claimed) == 'table' then claimed = claimed.err end",
                "return {applied, tostring(claimed)}",
            )
        )
        sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        script = _CYCLES[claim.name] = Script(f"apply+{claim.name}", source, sha)
    return script


class WorkerPathMixin:
    """The claim-to-finish methods of :class:`~afterwork.backends.redis.RedisBackend`."""

    if TYPE_CHECKING:
        _held: dict[str, tuple[str, Job]]
        _writes: list[_Write]
        _claims: list[_ClaimAsk]
        _topology: Topology
        _keys: str
        _maxlen: str
        _clock: Callable[[], float] | None
        _socket_timeout: float
        _redis: Any
        events_key: str
        _flusher: asyncio.Task[None] | None
        _timelines: Timelines
        _wake: Notifier
        _subscribed: asyncio.Event
        _cancel_callbacks: list[Callable[[str], object]]
        _prebegun: dict[str, str]
        _claiming: int
        _early_cancels: dict[str, None]
        _after_claim: tuple[int, frozenset[str] | None, float | None] | None
        _connect_timeout: float
        _finish_retry_for: float

        def now(self) -> float: ...

        def _key(self, name: str) -> str: ...

        async def _command(self, *args: Any, retry_for: float | None = None) -> Any: ...

        async def _eval(
            self, script: Script, *args: str, retry_for: float | None = None, replay: int = -1
        ) -> Any: ...

        def _parse(self, record: list[Any], job_id: str | None = None) -> Job: ...

        def _require(self) -> Any: ...

        async def _retrying(
            self,
            call: Callable[[], Any],
            retry_for: float | None,
            on_retry: Callable[[], None] | None = None,
        ) -> Any: ...

    # The connection of the worker's hot calls (see _eval_hot): one, as one task (the
    # flusher) makes them all; ``_hot_busy`` sends any other caller to the pool.
    _hot_conn: Any = None
    _hot_loop: asyncio.AbstractEventLoop | None = None
    _hot_busy: bool = False

    async def start(self, job: NewJob, worker: str, *, lease_ttl: float) -> Claim:
        token = os.urandom(16).hex()
        record = await self._eval(
            SCRIPTS["start"], worker, repr(float(lease_ttl)), token, *job_args(job)
        )
        claim = Claim(self._parse(record), token)
        self._held[claim.job.id] = (token, claim.job)
        return claim

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
        ``begin``: how many of them the worker starts at once (begun by the claim's own
        script call, see the module's docstring)."""
        self._after_claim = None
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
        # The claim rides in the next flush's script call, with the starts and finishes
        # asked for in this loop turn (see _flush_writes): a busy worker makes one round
        # trip per cycle, not a flush and a claim.
        ask = _ClaimAsk(
            SCRIPTS["claim_flow" if limited else "claim"],
            [
                worker,
                repr(float(lease_ttl)),
                str(limit),
                os.urandom(8).hex() + "-",
                str(max(min(begin, limit), 0)),
                str(len(names)),
                *names,
                *(flow or exclude_tasks),
            ],
            asyncio.get_running_loop().create_future(),
        )
        # A wake-up after this ticket may be for a job the claim does not see.
        ticket = self._wake.ticket()
        self._claims.append(ask)
        self._kick_writes()
        self._claiming += 1
        try:
            reply = await ask.future
        except BaseException:
            if self._claiming == 1:
                self._early_cancels = {}  # no claim of ours to tell them to
            raise
        finally:
            self._claiming -= 1
        skipped, records = reply[0], reply[1]
        self._skipped = bool(skipped)
        next_at = reply[2] if len(reply) > 2 else b""
        next_at = next_at.decode() if isinstance(next_at, bytes) else str(next_at)
        self._rate_next = float(next_at) if next_at else None
        if len(records) < limit and not skipped and len(reply) > 3:
            # Fewer than asked, none passed over: nothing else was due in these queues when
            # the claim looked, so the idle worker's wait for work needs not look again.
            due = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
            self._after_claim = (ticket, frozenset(names) or None, float(due) if due else None)
        claims: list[Claim] = []
        for record in records:
            try:
                claim = Claim(parse_job(record, self._timelines), record[TOKEN])
            except MalformedRecord as exc:
                await self._quarantine_claimed(record, str(exc))
                continue
            job = claim.job
            self._held[job.id] = (claim.token, job)
            if job.started_at is not None:
                # Begun by the claim (a claimed record has no start): the worker still
                # gets the claim, and its begin the begun job (``_handout``).
                self._prebegun[job.id] = claim.token
                claim = Claim(_unbegun(job), claim.token)
            claims.append(claim)
        self._redeliver_cancels(claims)
        return claims

    def _cancel_pushed(self, job_id: str) -> None:
        """A cancel request from the channel: tell the worker (see ``_redeliver_cancels``)."""
        if self._claiming:
            # It may be a job of that claim, which its worker does not know it holds yet:
            # the claim tells the worker again when it returns.
            self._early_cancels[job_id] = None
        for callback in list(self._cancel_callbacks):
            callback(job_id)

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
                loop.call_soon(self._cancel_pushed, claim.job.id)

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
        if self._prebegun:
            handed = [self._handout(lease) for lease in leases]
            if all(job is not None for job in handed):
                return handed  # begun by their claim: no write
            if any(job is not None for job in handed):
                rest = [lease for lease, job in zip(leases, handed, strict=True) if job is None]
                later = iter(await self._begin_written(rest))
                return [job if job is not None else next(later) for job in handed]
        return await self._begin_written(leases)

    async def _begin_written(self, leases: Sequence[Lease]) -> list[Job | None]:
        # Starts ride in the same script call as the finishes and starts asked for in the
        # same loop turn: a slot freed by a finish is usually taken by a start at once.
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.append(_Write(list(leases), None, future))
        self._kick_writes()
        begun: list[Job | None] = await future
        return begun

    def _handout(self, lease: Lease) -> Job | None:
        """The job its claim began, as that claim wrote it; ``None``: begin it here."""
        if self._prebegun.get(lease.job_id) != lease.token:
            return None
        del self._prebegun[lease.job_id]
        held = self._held.get(lease.job_id)
        if held is None or held[0] != lease.token or held[1].started_at is None:
            return None
        # Only while its lease surely holds (else recovered meanwhile, maybe): otherwise
        # the begin is written, fenced by the token, as any begin.
        expires = held[1].lease_expires_at
        if expires is None or self.now() >= expires - _HANDOUT_MARGIN:
            return None
        return held[1]

    def _kick_writes(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_writes())

    async def _flush_writes(self) -> None:
        """Send the pending starts and finishes, a batch per script call (group commit),
        and a pending claim with them.

        Each write is still fenced by its own token, and a repeat of an applied one writes
        nothing (a start finds the attempt started, a finish returns its record): safe to
        retry, for ``finish_retry_for`` when the batch holds a finish, ``retry_for``
        otherwise. A claim is never retried (a lost reply must not claim twice; the worker
        loop claims again): if the call that carried one fails, the claim fails and the
        writes are sent again alone.
        """
        # One loop turn first: the jobs that end in this turn free their slots before their
        # finishes are queued, and the starts of the jobs that take them, and the claim that
        # refills the buffer, join this batch.
        await asyncio.sleep(0)
        while self._writes or self._claims:
            batch = self._writes[:_FINISH_BATCH]
            del self._writes[:_FINISH_BATCH]
            ask: _ClaimAsk | None = None
            while ask is None and self._claims:
                ask = self._claims.pop(0)
                if ask.future.done():  # its caller was cancelled: claim nothing for it
                    ask = None
            try:
                where, computed, reply, claimed = await self._send(batch, ask)
            except Exception as exc:
                self._fail(batch, ask, exc)
                continue
            except asyncio.CancelledError:  # the store is closing
                self._fail(batch, ask, BackendUnavailable("the Redis store was closed"))
                raise
            self._settle(batch, where, computed, reply)
            if ask is not None and claimed is not None:
                if not ask.future.done():
                    ask.future.set_result(claimed)
                elif ask.future.cancelled():
                    self._hand_back(claimed)

    async def _send(
        self, batch: list[_Write], ask: _ClaimAsk | None
    ) -> tuple[list[tuple[int, int]], list[life.Change], Any, Any]:
        """One script call for ``batch`` and ``ask``: which write and lease each change is
        for, the changes, ``apply.lua``'s reply and the claim's (``None`` if it failed)."""
        items, where, computed = await self._write_items(batch)
        retry_for = self._finish_retry_for if any(w.outcome is not None for w in batch) else None
        if ask is None:
            reply = await self._apply_hot(items, retry_for) if items else []
            return where, computed, reply, None
        if not items:
            return where, computed, [], await self._claim_now(ask)
        reply, claimed = await self._apply_and_claim(items, ask, retry_for)
        return where, computed, reply, claimed

    def _settle(
        self,
        batch: list[_Write],
        where: list[tuple[int, int]],
        computed: list[life.Change],
        reply: Any,
    ) -> None:
        """Answer the starts and finishes of ``batch`` from ``apply.lua``'s reply."""
        results: list[list[Job | None]] = [[None] * len(w.leases) for w in batch]
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
                lease = write.leases[0]
                self._held.pop(lease.job_id, None)
                if self._prebegun.get(lease.job_id) == lease.token:
                    del self._prebegun[lease.job_id]
            if not write.future.done():
                write.future.set_result(result if write.outcome is None else result[0])
        # No wake-up for a finish as such: a waiting worker has nothing new to claim (it
        # would claim nothing, then look again); ``finish`` wakes it when there may be (a
        # job back in a queue, a place under a fleet-wide limit), and a job made ready by
        # any write is announced on the wake-up channel (``publish_wake``).

    def _hand_back(self, reply: Any) -> None:
        """The jobs of a claim whose caller was cancelled while it ran: released, in the
        next script call (before the next claim), rather than left leased to no one
        until their leases expire."""
        for record in reply[1]:
            try:
                job = parse_job(record, self._timelines)
            except MalformedRecord:
                continue  # recovered when its lease expires, and quarantined then
            token = record[TOKEN]
            self._held[job.id] = (token, job)
            if job.started_at is not None:  # begun by that claim: taken back unstarted
                self._prebegun[job.id] = token
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._writes.append(_Write([Lease(job.id, token)], Outcome.released(), future))

    @staticmethod
    def _fail(batch: list[_Write], ask: _ClaimAsk | None, exc: BaseException) -> None:
        futures = [w.future for w in batch] + ([ask.future] if ask is not None else [])
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    async def _apply_hot(self, items: list[dict[str, Any]], retry_for: float | None) -> Any:
        """``_apply`` on the hot calls' connection."""
        return await self._eval_hot(SCRIPTS["apply"], to_json(items).decode(), retry_for=retry_for)

    async def _claim_now(self, ask: _ClaimAsk) -> Any:
        """The claim alone (no write is pending)."""
        # Never retried: a lost reply must not claim twice; the worker loop retries.
        return await self._eval_hot(ask.script, *ask.args, retry_for=0.0)

    async def _apply_and_claim(
        self, items: list[dict[str, Any]], ask: _ClaimAsk, retry_for: float | None
    ) -> tuple[Any, Any]:
        """``items`` and the claim in one call (:func:`_cycle`); the replies of both.

        If Redis cannot be reached, the claim fails at once (``ask``'s future gets the
        error, the claim reply is ``None``) and the writes are sent again alone, retried
        as ever.
        """
        script = _cycle(ask.script)
        try:
            applied, claimed = await self._eval_hot(
                script, to_json(items).decode(), *ask.args, retry_for=0.0
            )
        except BackendUnavailable as exc:
            if not ask.future.done():
                ask.future.set_exception(exc)
            return await self._apply_hot(items, retry_for), None
        if isinstance(claimed, str):  # the claim failed; the writes were applied
            if not ask.future.done():
                ask.future.set_exception(BackendError(f"Redis failed: {claimed}"))
            return applied, None
        return applied, claimed

    async def _eval_hot(self, script: Script, *args: str, retry_for: float | None) -> Any:
        """``_eval`` on a connection of the worker's own (a single server; ``_eval`` on a
        cluster or through Sentinel, or if another call holds the connection).

        The worker's claims and flushes come from one task, one at a time, so one
        connection serves them, without the pool's lock and bookkeeping; the command is
        packed by hiredis, and one ``asyncio.timeout`` bounds the call instead of
        redis-py's per-read and per-write ones (a task per write). A failure, a timeout or
        a cancel mid-call drops the connection: one whose reply may still be on its way is
        never used again; the next call opens a new one.
        """
        if self._topology.kind != "single" or self._hot_busy:
            return await self._eval(script, *args, retry_for=retry_for)
        loop = asyncio.get_running_loop()
        if self._hot_loop is not loop:  # a connection's streams belong to its loop
            self._hot_loop, self._hot_conn = loop, None
        argv = (self._keys, "" if self._clock is None else repr(self._clock()), self._maxlen)

        async def call() -> Any:
            conn = self._hot_conn
            if conn is None:
                pool = self._require().connection_pool
                options = {**pool.connection_kwargs, "socket_timeout": None}
                conn = pool.connection_class(**options)
            elif self._redis is None:
                self._require()  # closed
            self._hot_conn = None  # taken: given back only once its reply has been read
            self._hot_busy = True
            try:
                async with asyncio.timeout(self._socket_timeout):
                    try:
                        await conn.send_packed_command(
                            _pack(
                                conn, ("EVALSHA", script.sha, "1", self.events_key, *argv, *args)
                            ),
                            check_health=False,
                        )
                        reply = await conn.read_response()
                    except NoScriptError:  # not run: a restarted server
                        await conn.send_packed_command(
                            _pack(
                                conn, ("EVAL", script.source, "1", self.events_key, *argv, *args)
                            ),
                            check_health=False,
                        )
                        reply = await conn.read_response()
            except ResponseError:
                # An error reply: the exchange is complete and the connection still good.
                await self._give_back_hot(conn)
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                raise
            finally:
                self._hot_busy = False
            await self._give_back_hot(conn)
            return reply

        return await self._retrying(call, retry_for)

    async def _give_back_hot(self, conn: Any) -> None:
        """Keep ``conn`` for the next hot call, or close it if another call (a retry that
        overlapped one, while the store was away) already gave one back."""
        if self._hot_conn is None:
            self._hot_conn = conn
            return
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def _drop_hot(self) -> None:
        """Fail the starts, finishes and claims still waiting for a script call, and close
        the hot calls' connection (the store is closing)."""
        writes, claims, self._writes, self._claims = self._writes, self._claims, [], []
        for ask in claims:
            self._fail(writes, ask, BackendUnavailable("the Redis store was closed"))
        self._fail(writes, None, BackendUnavailable("the Redis store was closed"))
        conn, self._hot_conn, self._hot_loop = self._hot_conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

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
                    unbegin = (
                        self._prebegun.get(lease.job_id) == lease.token
                        and job.started_at is not None
                    )
                    began = job
                    if unbegin:
                        job = _unbegun(job)  # as its claim would have left it (see below)
                    change = life.finish(
                        job, held=token, token=lease.token, outcome=write.outcome, now=now
                    )
                    if change is None:
                        continue
                    expect = {"status": "running", "token": lease.token}
                    items.append(change_item("finish", change, expect=expect, done=lease.token))
                    if unbegin:
                        # Begun by its claim, never run (released on a stop, cancelled in
                        # the buffer): finished as claimed, so no attempt is left; the
                        # start is taken back, from its rate group's log too.
                        item = items[-1]
                        item["expect"].update(hash_fields(began, ("started",)))
                        item["del"].append("started")
                        item["unstart"] = f"{began.id}:{began.attempts}"
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
        if self._prebegun and lost:
            for lease in leases:
                if lease.job_id in lost and self._prebegun.get(lease.job_id) == lease.token:
                    del self._prebegun[lease.job_id]
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
