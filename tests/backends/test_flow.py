"""Fleet-wide flow control, on every store: the claim enforces ``FlowLimit``s.

A store counts the jobs it records as running (claimed, started or not) per flow group,
and passes over jobs of a full group without blocking the jobs behind them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends.base import FlowLimit, NewJob, Outcome
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio

WAIT = 10.0


def new(task: str = "t", **fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task=task, **fields)


async def test_a_claim_never_hands_out_a_job_of_a_task_at_its_limit(aw: Afterwork) -> None:
    backend = aw.backend
    limits = {"t": FlowLimit(2)}
    await backend.enqueue([new("t") for _ in range(5)])
    other = (await backend.enqueue([new("u")]))[0]  # behind the five, in another task
    first = await backend.claim("w1", queues=None, limit=10, lease_ttl=10.0, limits=limits)
    assert Counter(c.job.task for c in first) == {"t": 2, "u": 1}  # u was not blocked
    assert other.id in {c.job.id for c in first}
    # Another worker (or the same one again) gets nothing more of t while two hold leases.
    assert await backend.claim("w2", queues=None, limit=10, lease_ttl=10.0, limits=limits) == []
    # Begun or only claimed, a job counts; a finished one frees its slot.
    t_claims = [c for c in first if c.job.task == "t"]
    await backend.begin([t_claims[0].lease])
    assert await backend.claim("w2", queues=None, limit=10, lease_ttl=10.0, limits=limits) == []
    await backend.finish(t_claims[0].lease, Outcome.succeeded())
    (again,) = await backend.claim("w2", queues=None, limit=10, lease_ttl=10.0, limits=limits)
    assert again.job.task == "t"
    # A released job frees its slot too.
    await backend.finish(t_claims[1].lease, Outcome.released())
    (after_release,) = await backend.claim(
        "w3", queues=None, limit=10, lease_ttl=10.0, limits=limits
    )
    assert after_release.job.task == "t"
    # Without limits the claim is today's claim: the two jobs of t left are handed out.
    rest = await backend.claim("w4", queues=None, limit=10, lease_ttl=10.0)
    assert len(rest) == 2


async def test_a_per_key_limit_caps_each_value_and_skips_busy_keys(aw: Afterwork) -> None:
    backend = aw.backend
    limits = {"t": FlowLimit(1, "customer")}
    busy = [new("t", kwargs={"customer": 1}, priority=5) for _ in range(20)]
    quiet = [new("t", kwargs={"customer": 2}), new("t", kwargs={"customer": "2"})]
    await backend.enqueue([*busy, *quiet])
    claims = await backend.claim("w1", queues=None, limit=10, lease_ttl=10.0, limits=limits)
    # One job of the busy key (the best), and the quiet keys behind its backlog: 2 and "2"
    # are different values.
    assert [c.job.id for c in claims] == [busy[0].id, quiet[0].id, quiet[1].id]
    assert await backend.claim("w2", queues=None, limit=10, lease_ttl=10.0, limits=limits) == []


async def test_a_dead_workers_slots_free_when_its_lease_is_recovered(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    limits = {"t": FlowLimit(1)}
    await backend.enqueue([new("t", max_attempts=3) for _ in range(2)])
    (held,) = await backend.claim("dead", queues=None, limit=5, lease_ttl=5.0, limits=limits)
    await backend.begin([held.lease])
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=5.0, limits=limits) == []
    clock.advance(6)
    (recovered,) = await backend.recover_expired(max_recoveries=3)
    assert recovered.id == held.job.id and recovered.status is JobStatus.QUEUED
    (next_,) = await backend.claim("w", queues=None, limit=5, lease_ttl=5.0, limits=limits)
    assert next_.job.task == "t"
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=5.0, limits=limits) == []


async def test_a_limited_group_is_counted_across_queues(aw: Afterwork) -> None:
    backend = aw.backend
    limits = {"t": FlowLimit(1)}
    await backend.enqueue([new("t", queue="a"), new("t", queue="b")])
    claims = await backend.claim("w", queues=["a", "b"], limit=5, lease_ttl=5.0, limits=limits)
    assert len(claims) == 1


async def test_task_concurrency_caps_running_attempts_of_a_drain(aw: Afterwork) -> None:
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    @aw.task(concurrency=2)
    async def fleet_capped(n: int) -> None:
        running["capped"] += 1
        peak["capped"] = max(peak["capped"], running["capped"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running["capped"] -= 1

    @aw.task(concurrency=1, concurrency_key="customer")
    async def per_customer(customer: int, n: int) -> None:
        key = f"c{customer}"
        running[key] += 1
        peak[key] = max(peak[key], running[key])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running[key] -= 1

    for n in range(8):
        await fleet_capped.enqueue(n)
        await per_customer.enqueue(n % 2, n)
    async with asyncio.timeout(WAIT):
        assert await aw.drain(concurrency=8) == 16
    assert peak["capped"] == 2
    assert peak["c0"] == 1 and peak["c1"] == 1


async def test_two_instances_sharing_the_store_obey_one_cap(
    make_aw: Any, backend_name: str
) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store is not shared between instances")
    running = 0
    peak = 0

    def declare(aw: Afterwork) -> Any:
        @aw.task(name="shared", concurrency=2)
        async def shared(n: int) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            for _ in range(3):
                await asyncio.sleep(0)
            running -= 1

        return shared

    one, two = make_aw(), make_aw()
    task = declare(one)
    declare(two)
    async with one, two:
        for n in range(12):
            await task.enqueue(n)
        async with asyncio.timeout(WAIT):
            done = await asyncio.gather(one.drain(concurrency=4), two.drain(concurrency=4))
    assert sum(done) == 12
    assert peak == 2


async def test_enqueue_tells_whether_it_created_the_job(aw: Afterwork) -> None:
    @aw.task
    async def greet(name: str) -> None: ...

    first = await greet.options(key="greet:ada").enqueue("ada")
    again = await greet.options(key="greet:ada").enqueue("ada")
    other = await greet.enqueue("bob")
    assert (first.created_now, again.created_now, other.created_now) == (True, False, True)
    assert again.id == first.id
    fetched = await aw.get_job(first.id)
    assert fetched is not None and fetched.created_now is None and fetched == first
    batch = await aw.enqueue_many(
        [
            aw.build_job(greet, ("ada",), {}, {"key": "greet:ada"}),
            aw.build_job(greet, ("cy",), {}, {}),
        ]
    )
    assert [job.created_now for job in batch] == [False, True]


async def test_jobs_claimed_without_limits_count_too(aw: Afterwork) -> None:
    """A worker that passes no limits (an older deploy) still fills the group's slots."""
    backend = aw.backend
    await backend.enqueue([new("t") for _ in range(3)])
    (plain,) = await backend.claim("old", queues=None, limit=1, lease_ttl=10.0)
    limits = {"t": FlowLimit(2)}
    (limited,) = await backend.claim("new", queues=None, limit=5, lease_ttl=10.0, limits=limits)
    assert limited.job.id != plain.job.id
    assert await backend.claim("new", queues=None, limit=5, lease_ttl=10.0, limits=limits) == []
