"""Every store agrees with the model: random lives of jobs, the pure lifecycle as the oracle.

A hypothesis state machine drives a store and a reference model side by side through
random sequences of enqueue / claim / begin / heartbeat / progress / finish (every outcome)
/ lease expiry and recovery / cancel / manual retry / purge, with clock jumps. The model is
a dict of records moved only by :mod:`afterwork._lifecycle`; after every step the store
must hold the same records, refuse the same stale tokens and publish the same events.

A store whose claim can begin (``ClaimBegins``) also claims with ``begin=n``: the model
claims, then begins the first ``n`` (none when one of them must run alone) at once; the
lease's ``begin`` then changes nothing, and a finish before it finishes the job as the
claim alone left it (no attempt, no timeline entry).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from afterwork import _lifecycle as life
from afterwork.backends import from_url
from afterwork.backends.base import (
    ClaimBegins,
    EventStream,
    FlowLimit,
    Lease,
    NewJob,
    Outcome,
    Store,
)
from afterwork.job import TERMINAL_STATUSES, Job, JobError, JobEvent, JobStatus, new_job_id
from afterwork.testing import FakeClock

T = TypeVar("T")

LEASE_TTL = 10.0
MAX_RECOVERIES = 2
#: How long an expected event may take to arrive (the SQLite store tails a table).
EVENT_WAIT = 2.0
#: Fields every store must agree on exactly (ids, timestamps by the injected clock).
FIELDS = (
    "status",
    "queue",
    "priority",
    "attempts",
    "max_attempts",
    "recoveries",
    "key",
    "run_at",
    "started_at",
    "finished_at",
    "result",
    "progress",
    "progress_message",
    "worker",
    "lease_expires_at",
    "cancel_requested",
    "timeline",
)


class Model:
    """The oracle: records in a dict, moved only by the pure lifecycle functions."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.tokens: dict[str, str] = {}
        self.events: list[tuple[str, str]] = []
        #: Jobs a claim began whose lease's ``begin`` has not come yet (job id: token).
        self.prebegun: dict[str, str] = {}

    def apply(self, change: life.Change | None, token: str | None = None) -> Job | None:
        if change is None:
            return None
        job = change.job
        self.jobs[job.id] = job
        if job.status is not JobStatus.RUNNING:
            self.tokens.pop(job.id, None)
        elif token is not None:
            self.tokens[job.id] = token
        if change.event is not None:
            self.events.append((change.event, job.id))
        return job

    def key_holder(self, key: str) -> Job | None:
        for job in self.jobs.values():
            if job.key == key and job.status not in TERMINAL_STATUSES:
                return job
        return None

    def enqueue(self, new: NewJob, now: float) -> Job:
        if new.key is not None and (holder := self.key_holder(new.key)) is not None:
            return holder
        job = self.apply(life.create(new, now))
        assert job is not None
        return job

    def due(self, now: float, limit: int) -> list[Job]:
        for job in list(self.jobs.values()):
            self.apply(life.promote(job, now))
        ready = [j for j in self.jobs.values() if j.status is JobStatus.QUEUED]
        return sorted(ready, key=life.ready_order)[:limit]

    def due_within(self, now: float, limit: int, flow: FlowLimit) -> list[Job]:
        """What a claim with a fleet-wide limit on task ``t`` takes: ready order, full
        groups passed over (counted from the running records)."""
        ready = self.due(now, len(self.jobs))
        used = Counter(
            life.flow_group(j.task, j.kwargs, flow)
            for j in self.jobs.values()
            if j.status is JobStatus.RUNNING
        )
        taken: list[Job] = []
        for job in ready:
            group = life.flow_group(job.task, job.kwargs, flow)
            if len(taken) < limit and used[group] < flow.limit:
                used[group] += 1
                taken.append(job)
        return taken

    def held(self, job_id: str) -> tuple[Job | None, str | None]:
        return self.jobs.get(job_id), self.tokens.get(job_id)

    def handed_out(self, lease: Lease) -> bool:
        """The lease's ``begin`` or finish came: was its job begun by its claim?"""
        if self.prebegun.get(lease.job_id) != lease.token:
            return False
        del self.prebegun[lease.job_id]
        return True


class _Lives(RuleBasedStateMachine):
    """The state machine; ``url`` is set on a subclass per store."""

    url: str = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.model = Model()
        self.leases: list[Lease] = []  # every lease ever handed out, stale ones included
        self.store: Store = from_url(self.url, clock=self.clock)
        try:
            self.run(self.store.open())
            self.stream = self.run(self._subscribe())
        except BaseException:
            self.loop.close()
            raise

    async def _subscribe(self) -> EventStream:
        return self.store.events()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def teardown(self) -> None:
        try:
            self.run(self.stream.aclose())
            self.run(self.store.aclose())
        finally:
            self.loop.close()

    @initialize()
    def start(self) -> None:
        self.model.events.clear()

    # -- rules -----------------------------------------------------------------------------

    @rule(
        priority=st.integers(-2, 2),
        delay=st.sampled_from([0.0, 0.0, 1.0, 5.0]),
        key=st.sampled_from([None, None, "k1", "k2"]),
        max_attempts=st.integers(1, 3),
        count=st.integers(1, 3),
    )
    def enqueue(
        self, priority: int, delay: float, key: str | None, max_attempts: int, count: int
    ) -> None:
        news = [
            NewJob(
                id=new_job_id(),
                task="t",
                args=[i],
                kwargs={"k": i % 2},
                priority=priority,
                delay=delay,
                key=key,
                max_attempts=max_attempts,
                result_ttl=30.0,
            )
            for i in range(count)
        ]
        got = self.run(self.store.enqueue(news))
        now = self.clock()
        want = [self.model.enqueue(new, now) for new in news]
        assert [j.id for j in got] == [j.id for j in want]

    @rule(limit=st.integers(1, 3), worker=st.sampled_from(["w1", "w2"]))
    def claim(self, limit: int, worker: str) -> None:
        now = self.clock()
        expected = self.model.due(now, limit)
        claims = self.run(self.store.claim(worker, queues=None, limit=limit, lease_ttl=LEASE_TTL))
        assert [c.job.id for c in claims] == [j.id for j in expected]
        for claim, job in zip(claims, expected, strict=True):
            change = life.claim(job, worker=worker, now=now, lease_ttl=LEASE_TTL)
            self.model.apply(change, token=claim.token)
            self.leases.append(claim.lease)

    @rule(
        limit=st.integers(1, 3),
        cap=st.integers(1, 2),
        keyed=st.booleans(),
        worker=st.sampled_from(["w1", "w2"]),
    )
    def claim_within_a_fleet_limit(self, limit: int, cap: int, keyed: bool, worker: str) -> None:
        now = self.clock()
        flow = FlowLimit(cap, "k" if keyed else None)
        expected = self.model.due_within(now, limit, flow)
        claims = self.run(
            self.store.claim(
                worker, queues=None, limit=limit, lease_ttl=LEASE_TTL, limits={"t": flow}
            )
        )
        assert [c.job.id for c in claims] == [j.id for j in expected]
        for claim, job in zip(claims, expected, strict=True):
            change = life.claim(job, worker=worker, now=now, lease_ttl=LEASE_TTL)
            self.model.apply(change, token=claim.token)
            self.leases.append(claim.lease)

    @precondition(lambda self: isinstance(self.store, ClaimBegins))
    @rule(limit=st.integers(1, 3), begin=st.integers(0, 3), worker=st.sampled_from(["w1", "w2"]))
    def claim_and_begin(self, limit: int, begin: int, worker: str) -> None:
        now = self.clock()
        expected = self.model.due(now, limit)
        claims = self.run(
            self.store.claim(  # type: ignore[call-arg]
                worker, queues=None, limit=limit, lease_ttl=LEASE_TTL, begin=begin
            )
        )
        assert [c.job.id for c in claims] == [j.id for j in expected]
        # The first ``begin`` start at once, unless one of them must run alone.
        begun = min(begin, len(expected))
        if any(job.recoveries > 0 for job in expected[:begun]):
            begun = 0
        for i, (claim, job) in enumerate(zip(claims, expected, strict=True)):
            change = life.claim(job, worker=worker, now=now, lease_ttl=LEASE_TTL)
            claimed = self.model.apply(change, token=claim.token)
            assert claimed is not None
            # Handed out as a claim, begun or not.
            assert (claim.job.attempts, claim.job.started_at) == (claimed.attempts, None)
            self.leases.append(claim.lease)
            if i < begun:
                self.model.apply(life.begin(claimed, held=claim.token, token=claim.token, now=now))
                self.model.prebegun[job.id] = claim.token

    def _pick(self, data: st.DataObject) -> Lease:
        return data.draw(st.sampled_from(self.leases), label="lease")

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def begin(self, data: st.DataObject) -> None:
        lease = self._pick(data)
        (got,) = self.run(self.store.begin([lease]))
        self.model.handed_out(lease)  # begun by its claim: life.begin changes nothing
        job, held = self.model.held(lease.job_id)
        if job is None:  # purged
            assert got is None
            return
        want = self.model.apply(life.begin(job, held=held, token=lease.token, now=self.clock()))
        assert (got is None) == (want is None), (got, want)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        lease = self._pick(data)
        reply = self.run(self.store.heartbeat([lease], lease_ttl=LEASE_TTL))
        job, held = self.model.held(lease.job_id)
        if job is None:  # purged
            assert lease.job_id in reply.lost
            return
        renewed = life.heartbeat(
            job, held=held, token=lease.token, now=self.clock(), lease_ttl=LEASE_TTL
        )
        assert (lease.job_id in reply.lost) == (renewed is None)
        if renewed is None:
            self.model.handed_out(lease)  # lost: a store forgets its claim began it
        else:
            self.model.jobs[renewed.id] = renewed
            assert (lease.job_id in reply.cancel) == renewed.cancel_requested

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), value=st.sampled_from([0.25, 0.5]))
    def progress(self, data: st.DataObject, value: float) -> None:
        lease = self._pick(data)
        ok = self.run(self.store.set_progress(lease, value, f"at {value}"))
        job, held = self.model.held(lease.job_id)
        if job is None:  # purged
            assert not ok
            return
        change = life.progress(
            job, held=held, token=lease.token, progress=value, message=f"at {value}"
        )
        assert ok == (self.model.apply(change) is not None)

    @precondition(lambda self: self.leases)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["succeeded", "failed", "retry", "cancelled", "released"]),
        delay=st.sampled_from([0.0, 2.0]),
    )
    def finish(self, data: st.DataObject, kind: str, delay: float) -> None:
        lease = self._pick(data)
        error = JobError.from_message("Boom", "it failed")
        outcome = {
            "succeeded": Outcome.succeeded({"n": 1}),
            "failed": Outcome.failed(error),
            "retry": Outcome.retry(error, delay),
            "cancelled": Outcome.cancelled(error),
            "released": Outcome.released(),
        }[kind]
        got = self.run(self.store.finish(lease, outcome))
        job, held = self.model.held(lease.job_id)
        if job is None:  # purged
            self.model.handed_out(lease)
            assert got is None
            return
        if self.model.handed_out(lease) and held == lease.token and job.started_at is not None:
            # Begun by its claim, never run: finished as the claim alone left it.
            job = life.evolve(job, attempts=job.attempts - 1, started_at=None)
        change = life.finish(job, held=held, token=lease.token, outcome=outcome, now=self.clock())
        want = self.model.apply(change)
        assert (got is None) == (want is None), (got, want)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def recover(self) -> None:
        now = self.clock()
        got = self.run(self.store.recover_expired(max_recoveries=MAX_RECOVERIES))
        want: list[str] = []
        expired = [job for job in self.model.jobs.values() if life.lease_expired(job, now)]
        for job in sorted(expired, key=life.recovery_order):
            self.model.apply(life.recover(job, now=now, max_recoveries=MAX_RECOVERIES))
            want.append(job.id)
        assert [j.id for j in got] == want

    @precondition(lambda self: self.model.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.model.jobs)), label="job")
        self.run(self.store.cancel(job_id))
        self.model.apply(life.cancel(self.model.jobs[job_id], now=self.clock()))

    @precondition(lambda self: self.model.jobs)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.model.jobs)), label="job")
        self.run(self.store.retry(job_id))
        job = self.model.jobs[job_id]
        key_free = job.key is None or self.model.key_holder(job.key) is None
        self.model.apply(life.retry(job, now=self.clock(), key_free=key_free))

    @rule(older_than=st.sampled_from([None, 0.0, 10.0]))
    def purge(self, older_than: float | None) -> None:
        now = self.clock()
        deleted = self.run(self.store.purge(older_than=older_than))
        doomed = [
            job_id
            for job_id, job in self.model.jobs.items()
            if life.purgeable(job, now=now, older_than=older_than)
        ]
        for job_id in doomed:
            del self.model.jobs[job_id]
        assert deleted == len(doomed)

    # -- what must hold after every step ---------------------------------------------------

    @invariant()
    def same_records(self) -> None:
        for job_id, want in self.model.jobs.items():
            got = self.run(self.store.get(job_id))
            assert got is not None, f"job {job_id} missing from the store"
            for name in FIELDS:
                assert getattr(got, name) == getattr(want, name), (name, got, want)
            assert (got.error is None) == (want.error is None), (got.error, want.error)
            if got.error is not None and want.error is not None:
                assert got.error.type == want.error.type

    @invariant()
    def same_events(self) -> None:
        expected, self.model.events = self.model.events, []
        got: list[tuple[str, str]] = []
        while len(got) < len(expected):
            try:
                event: JobEvent = self.run(anext(self.stream), EVENT_WAIT)
            except TimeoutError:
                break
            # Purge events are a store's own bookkeeping, not a transition of the model.
            if event.kind != "purged":
                got.append((event.kind, event.job_id))
        assert got == expected


@pytest.mark.parametrize("name", ["memory", "sqlite", "redis", "postgres"])
def test_every_store_agrees_with_the_model(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if name == "redis" else ""
    postgres_url = request.getfixturevalue("postgres_url") if name == "postgres" else ""
    counter = iter(range(10**9))

    class Lives(_Lives):
        def __init__(self) -> None:
            # A fresh store for every example: a new file, or a new key prefix.
            run = f"{next(counter)}x{uuid.uuid4().hex[:8]}"
            if name == "sqlite":
                type(self).url = f"sqlite:///{tmp_path}/model-{run}.db?event_poll_interval=0.002"
            elif name == "redis":
                type(self).url = f"{redis_url}?prefix=afterwork:m{run}"
            elif name == "postgres":
                type(self).url = f"{postgres_url}?schema=m{run}&min_pool_size=0"
            super().__init__()

    run_state_machine_as_test(
        Lives,
        settings=settings(
            # A PostgreSQL example creates and migrates a schema of its own: fewer of them
            # keep the suite's time (MODEL_EXAMPLES raises it for a long run).
            max_examples=int(
                os.environ.get("MODEL_EXAMPLES", "40" if name == "postgres" else "100")
            ),
            stateful_step_count=int(os.environ.get("MODEL_STEPS", "80")),
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
