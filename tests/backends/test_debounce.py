"""Debounce, on every store: a burst of enqueues with one key runs once, with the last
arguments, when the key has been quiet for the window.

The store's atomic enqueue step decides (``afterwork._lifecycle.debounce``): a waiting job
holding the key takes the new arguments and is pushed back; a running one is not touched
(it gives up its key), and the enqueue makes a new waiting job.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterwork import Afterwork, EnqueueError, JobStatus
from afterwork.backends.base import NewJob, Outcome
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


def debounced(key: str, n: int, window: float = 5.0, task: str = "d") -> NewJob:
    return NewJob(id=new_job_id(), task=task, kwargs={"n": n}, key=key, delay=window, debounce=True)


async def test_a_burst_with_one_key_is_one_job_with_the_last_arguments(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    (first,) = await backend.enqueue([debounced("k", 1)])
    assert first.status is JobStatus.SCHEDULED
    for n in (2, 3, 4):
        clock.advance(3)  # inside the window: pushed back each time
        (same,) = await backend.enqueue([debounced("k", n)])
        assert same.id == first.id
        assert same.kwargs == {"n": n}
        assert same.run_at == pytest.approx(backend.now() + 5.0, abs=1e-3)
    quiet_from = backend.now()
    clock.advance(4.9)
    assert await backend.claim("w", queues=None, limit=10, lease_ttl=60.0) == []
    clock.advance(0.1)
    (claim,) = await backend.claim("w", queues=None, limit=10, lease_ttl=60.0)
    assert claim.job.id == first.id and claim.job.kwargs == {"n": 4}
    assert claim.job.run_at == pytest.approx(quiet_from + 5.0, abs=1e-3)
    stored = await backend.get(first.id)
    assert stored is not None and stored.kwargs == {"n": 4}
    # Other keys are their own bursts.
    (other,) = await backend.enqueue([debounced("other", 9)])
    assert other.id != first.id


async def test_a_running_job_is_not_touched_the_next_enqueue_makes_a_new_one(
    aw: Afterwork, clock: FakeClock
) -> None:
    backend = aw.backend
    (first,) = await backend.enqueue([debounced("k", 1)])
    clock.advance(5)
    (claim,) = await backend.claim("w", queues=None, limit=10, lease_ttl=60.0)
    await backend.begin([claim.lease])
    (second,) = await backend.enqueue([debounced("k", 2)])
    assert second.id != first.id and second.kwargs == {"n": 2}
    running = await backend.get(first.id)
    assert running is not None and running.status is JobStatus.RUNNING
    assert running.kwargs == {"n": 1} and running.run_at == claim.job.run_at
    (third,) = await backend.enqueue([debounced("k", 3)])  # joins the new waiting one
    assert third.id == second.id and third.kwargs == {"n": 3}
    done = await backend.finish(claim.lease, Outcome.succeeded())
    assert done is not None and done.status is JobStatus.SUCCEEDED
    (fourth,) = await backend.enqueue([debounced("k", 4)])  # the key stayed with the new one
    assert fourth.id == second.id and fourth.kwargs == {"n": 4}


async def test_a_queued_holder_is_pushed_back_too(aw: Afterwork, clock: FakeClock) -> None:
    backend = aw.backend
    (first,) = await backend.enqueue([debounced("k", 1)])
    clock.advance(6)  # due, not claimed yet (workers busy): still waiting
    (same,) = await backend.enqueue([debounced("k", 2)])
    assert same.id == first.id and same.status is JobStatus.SCHEDULED
    assert await backend.claim("w", queues=None, limit=10, lease_ttl=60.0) == []
    clock.advance(5)
    (claim,) = await backend.claim("w", queues=None, limit=10, lease_ttl=60.0)
    assert claim.job.kwargs == {"n": 2}
    stats = {s.queue: s.counts for s in await aw.stats()}
    assert stats["default"].get(JobStatus.QUEUED, 0) == 0
    assert stats["default"].get(JobStatus.SCHEDULED, 0) == 0


async def test_a_plain_key_still_dedupes_without_debounce(aw: Afterwork) -> None:
    (first,) = await aw.backend.enqueue([NewJob(id=new_job_id(), task="d", key="k")])
    (same,) = await aw.backend.enqueue(
        [NewJob(id=new_job_id(), task="d", key="k", kwargs={"n": 2})]
    )
    assert same.id == first.id and same.kwargs == {}


async def test_debounce_through_the_app(make_aw: AwFactory, clock: FakeClock) -> None:
    aw = make_aw()
    saved: list[str] = []

    @aw.task(debounce=5.0)
    async def reindex(doc: str) -> None:
        saved.append(doc)

    async with aw:
        first = await reindex.options(key="doc:1").enqueue("v1")
        assert first.created_now is True
        clock.advance(2)
        again = await reindex.options(key="doc:1").enqueue("v2")
        assert again.created_now is False and again.id == first.id
        await aw.drain()
        assert saved == []  # not quiet for 5 s yet
        clock.advance(5)
        await aw.drain()
        assert saved == ["v2"]
        with pytest.raises(EnqueueError, match="debounced: enqueue it with a key"):
            await reindex.enqueue("v3")


async def test_bad_debounce_windows_are_refused(aw: Afterwork) -> None:
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="debounce must be a positive number"):

            @aw.task(debounce=bad, name=f"bad{bad!r}")
            async def task() -> None: ...


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(gaps=st.lists(st.floats(min_value=0.0, max_value=8.0), min_size=1, max_size=8))
async def test_each_quiet_window_runs_the_last_arguments_once(
    make_aw: AwFactory, clock: FakeClock, gaps: list[float]
) -> None:
    """Enqueues at random gaps: a job runs once per gap of at least the window (claimed
    in between), with the arguments of the enqueue before that gap."""
    key = new_job_id()
    queue = new_job_id()
    aw = make_aw()
    async with aw:
        backend = aw.backend
        expected: list[int] = []
        got: list[int] = []
        for n, gap in enumerate(gaps):
            await backend.enqueue([replace(debounced(key, n), queue=queue)])
            gap = round(gap, 3)
            clock.advance(gap)
            if gap >= 5.0:
                expected.append(n)
            claims = await backend.claim("w", queues=[queue], limit=10, lease_ttl=600.0)
            got += [claim.job.kwargs["n"] for claim in claims]
        clock.advance(5.0)
        if not expected or expected[-1] != len(gaps) - 1:
            expected.append(len(gaps) - 1)
        claims = await backend.claim("w", queues=[queue], limit=10, lease_ttl=600.0)
        got += [claim.job.kwargs["n"] for claim in claims]
        assert got == expected
