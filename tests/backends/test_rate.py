"""Rate limits, on every store: the claim enforces ``RateLimit``s (a sliding log of starts).

A store keeps, per group, the start times of its attempts (stamped at begin) and the jobs
claimed and not started yet (counted as starting now); in the claim's atomic step, a job
whose group has ``limit`` starts within the last ``per`` seconds is passed over (the jobs
behind it are claimed), and the store tells when the earliest one passed over may start
(``rate_next``), so a worker sleeps until then.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterwork import Afterwork, EnqueueError, RateLimit
from afterwork import _lifecycle as life
from afterwork.backends.base import NewJob, Outcome, RateLimits
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


def new(task: str = "t", **fields: Any) -> NewJob:
    return NewJob(id=new_job_id(), task=task, **fields)


async def claim(aw: Afterwork, rates: dict[str, RateLimit], limit: int = 10) -> list[Any]:
    """Claim and start at once (a start is stamped when the attempt begins)."""
    claims = await aw.backend.claim("w", queues=None, limit=limit, lease_ttl=600.0, rates=rates)
    await aw.backend.begin([c.lease for c in claims])
    return claims


async def test_at_most_n_starts_per_window_and_the_store_says_when_the_next_may_start(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    assert isinstance(backend, RateLimits)
    rates = {"t": RateLimit(2, per=10.0)}
    await backend.enqueue([new("t") for _ in range(5)])
    other = (await backend.enqueue([new("u")]))[0]  # behind the five: not held back
    t0 = backend.now()
    first = await claim(aw, rates)
    assert Counter(c.job.task for c in first) == {"t": 2, "u": 1}
    assert other.id in {c.job.id for c in first}
    assert backend.rate_next() is None or backend.rate_next() == pytest.approx(t0 + 10.0)
    assert await claim(aw, rates) == []  # the window is full: nothing, and no failure
    assert backend.rate_next() == pytest.approx(t0 + 10.0, abs=1e-3)
    clock.advance(9.9)
    assert await claim(aw, rates) == []
    clock.advance(0.1)  # t0 + 10: both starts left the window
    assert len(await claim(aw, rates)) == 2
    assert await claim(aw, rates) == []
    # Finishing the started jobs frees nothing: a rate counts starts, not running jobs.
    job = await backend.get(first[0].job.id)
    assert job is not None and job.status.value == "running"
    clock.advance(10.0)
    assert len(await claim(aw, rates)) == 1  # the last of the five
    assert backend.rate_next() is None


async def test_the_window_slides_start_by_start(aw: Afterwork, clock: FakeClock) -> None:
    backend = aw.backend
    assert isinstance(backend, RateLimits)
    rates = {"t": RateLimit(3, per=10.0)}
    await backend.enqueue([new("t") for _ in range(10)])
    assert len(await claim(aw, rates, limit=1)) == 1  # t0
    clock.advance(4)
    assert len(await claim(aw, rates, limit=1)) == 1  # t0 + 4
    clock.advance(4)
    assert len(await claim(aw, rates)) == 1  # t0 + 8: the third start fills the window
    t8 = backend.now()
    assert await claim(aw, rates) == []
    assert backend.rate_next() == pytest.approx(t8 + 2.0, abs=1e-3)  # the t0 start leaves
    clock.advance(2)
    assert len(await claim(aw, rates)) == 1  # t0 + 10
    assert backend.rate_next() == pytest.approx(t8 + 6.0, abs=1e-3)  # then the t0 + 4 one


async def test_a_keyed_rate_limit_holds_per_value(aw: Afterwork) -> None:
    rates = {"t": RateLimit(1, per=60.0, key="host")}
    busy = [new("t", kwargs={"host": "a"}, priority=5) for _ in range(5)]
    quiet = [new("t", kwargs={"host": "b"}), new("t", kwargs={"host": None})]
    await aw.backend.enqueue([*busy, *quiet])
    claims = await claim(aw, rates)
    assert [c.job.id for c in claims] == [busy[0].id, quiet[0].id, quiet[1].id]
    assert await claim(aw, rates) == []


async def test_a_claimed_job_counts_as_starting_now_until_it_begins_or_goes_back(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    rates = {"t": RateLimit(1, per=10.0)}
    await backend.enqueue([new("t", max_attempts=3) for _ in range(3)])
    (held,) = await backend.claim("w", queues=None, limit=5, lease_ttl=600.0, rates=rates)
    clock.advance(30)  # long past the window: an unstarted claim still holds the slot
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=600.0, rates=rates) == []
    # Begun late: the start is stamped at its begin, and the window runs from there.
    await backend.begin([held.lease])
    begun_at = backend.now()
    clock.advance(9)
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=600.0, rates=rates) == []
    assert backend.rate_next() == pytest.approx(begun_at + 10.0, abs=1e-3)  # type: ignore[attr-defined]
    clock.advance(1)
    (second,) = await backend.claim("w", queues=None, limit=5, lease_ttl=600.0, rates=rates)
    # Released before it started: the slot is free again at once.
    await backend.finish(second.lease, Outcome.released())
    (third,) = await backend.claim("w", queues=None, limit=5, lease_ttl=600.0, rates=rates)
    await backend.begin([third.lease])
    assert await backend.claim("w", queues=None, limit=5, lease_ttl=600.0, rates=rates) == []


async def test_the_rate_log_is_shared_by_every_worker_and_queue(aw: Afterwork) -> None:
    rates = {"t": RateLimit(2, per=60.0)}
    await aw.backend.enqueue([new("t", queue="a"), new("t", queue="b"), new("t", queue="c")])
    one = await aw.backend.claim("w1", queues=["a"], limit=5, lease_ttl=600.0, rates=rates)
    two = await aw.backend.claim("w2", queues=["b", "c"], limit=5, lease_ttl=600.0, rates=rates)
    assert len(one) + len(two) == 2


async def test_a_drain_starts_what_the_rate_allows_and_leaves_the_rest_waiting(
    make_aw: AwFactory, clock: FakeClock
) -> None:
    aw = make_aw()
    ran: list[int] = []

    @aw.task(rate_limit=RateLimit(2, per=60.0))
    async def call_api(n: int) -> None:
        ran.append(n)

    async with aw:
        jobs = [await call_api.enqueue(n) for n in range(5)]
        await aw.drain()
        assert ran == [0, 1]
        waiting = await aw.get_job(jobs[2].id)
        assert waiting is not None and waiting.status.value == "queued"  # never failed
        clock.advance(60)
        await aw.drain()
        assert ran == [0, 1, 2, 3]


async def test_bad_rate_limits_are_refused_before_anything_is_stored(aw: Afterwork) -> None:
    bad_limits: list[Callable[[], RateLimit]] = [
        lambda: RateLimit(0, per=1.0),
        lambda: RateLimit(-1, per=1.0),
        lambda: RateLimit(1, per=0.0),
        lambda: RateLimit(1, per=-5),
        lambda: RateLimit(1, per=float("inf")),
        lambda: RateLimit(True, per=1.0),
        lambda: RateLimit(1.5, per=1.0),  # type: ignore[arg-type]
        lambda: RateLimit(1, per=1.0, key=""),
    ]
    for bad in bad_limits:
        with pytest.raises(ValueError, match="RateLimit"):
            bad()
    with pytest.raises(ValueError, match="rate_limit key 'nope' is not an argument"):

        @aw.task(rate_limit=RateLimit(1, per=1.0, key="nope"))
        async def unknown_key(host: str) -> None: ...

    with pytest.raises(ValueError, match="rate_limit must be a RateLimit"):

        @aw.task(rate_limit=5)  # type: ignore[call-overload,untyped-decorator]
        async def not_a_rate(host: str) -> None: ...

    @aw.task(rate_limit=RateLimit(1, per=1.0, key="host"))
    async def keyed(host: object) -> None: ...

    with pytest.raises(EnqueueError, match="rate_limit key argument 'host' must be a JSON scalar"):
        await keyed.enqueue(["a", "list"])
    assert sum(sum(stats.counts.values()) for stats in await aw.stats()) == 0
    # The key argument is stored by name, positional or not, so a store finds its group.
    job = await keyed.enqueue("api.example")
    assert job.kwargs == {"host": "api.example"} and job.args == []


RATE = RateLimit(3, per=5.0)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=4.0), st.integers(1, 4)),
        min_size=1,
        max_size=12,
    )
)
async def test_every_store_agrees_with_the_sliding_log(
    make_aw: AwFactory, clock: FakeClock, steps: list[tuple[float, int]]
) -> None:
    """A random schedule of claims: each store claims exactly what the pure decision
    admits, and no window of ``per`` seconds ever holds more than ``limit`` starts."""
    # Examples share the store: each has a task and a queue of its own.
    name = new_job_id()
    aw = make_aw()
    async with aw:
        backend = aw.backend
        await backend.enqueue([new(name, queue=name) for _ in range(40)])
        model: list[float] = []
        for advance, room in steps:
            clock.advance(round(advance, 3))
            now = backend.now()
            expected = 0
            while expected < room and life.rate_next_start(model, now=now, rate=RATE) is None:
                model.append(now)
                expected += 1
            got = await backend.claim(
                "w", queues=[name], limit=room, lease_ttl=600.0, rates={name: RATE}
            )
            await backend.begin([c.lease for c in got])
            assert len(got) == expected, (model, now)
        model.sort()
        for i in range(len(model) - RATE.limit):
            assert model[i + RATE.limit] - model[i] >= RATE.per - 1e-6


async def test_a_worker_waits_for_the_next_slot_instead_of_polling(
    aw: Afterwork, clock: FakeClock
) -> None:
    """After a claim passed jobs over for a rate limit, ``wait_for_work`` sleeps until the
    store's next slot (here 0.2 s of the fake clock's future, waited in real time), not at
    once (a spin) and not for its whole timeout."""
    backend = aw.backend
    rates = {"t": RateLimit(1, per=0.2)}
    await backend.enqueue([new("t") for _ in range(2)])
    assert len(await claim(aw, rates)) == 1
    assert await claim(aw, rates) == []
    # As a worker does: wait, claim again; a wake-up may come early (a notification of
    # earlier writes arriving late) but the loop does not spin.
    loop = asyncio.get_running_loop()
    started = loop.time()
    rounds = 0
    while loop.time() - started < 0.2:
        rounds += 1
        await backend.wait_for_work(None, 30.0)
        assert await backend.claim("w", queues=None, limit=5, lease_ttl=60.0, rates=rates) == []
    assert rounds <= 3, rounds
    assert loop.time() - started < 10.0
