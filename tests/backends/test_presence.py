"""Workers you can see: presence records on every store, refreshed by the heartbeat."""

from __future__ import annotations

import os
import socket

import anyio
import pytest

from afterwork import Afterwork, JobContext
from afterwork.__about__ import __version__
from afterwork.backends.base import WorkerInfo, WorkerPresence
from afterwork.testing import FakeClock

from ..waiting import eventually
from .conftest import AwFactory

pytestmark = pytest.mark.anyio


def info(worker_id: str, now: float, *, ttl: float = 10.0, started: float = 0.0) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=1,
        version="v",
        queues=("a", "b"),
        concurrency=4,
        running=("j1",),
        started_at=started or now,
        last_seen=now,
        expires_at=now + ttl,
    )


async def test_a_worker_record_lives_until_its_lease_runs_out(
    aw: Afterwork, clock: FakeClock
) -> None:
    store = aw.backend
    assert isinstance(store, WorkerPresence)
    now = clock()
    await store.announce_worker(info("w1", now))
    clock.advance(1)
    await store.announce_worker(info("w2", clock(), ttl=30.0))
    assert [w.id for w in await aw.workers()] == ["w1", "w2"]
    assert (await aw.workers())[0] == info("w1", now)  # every field round-trips
    clock.advance(9.5)  # w1 was last seen 10.5 s ago: its 10 s lease ran out
    assert [w.id for w in await aw.workers()] == ["w2"]
    await store.announce_worker(info("w1", clock(), started=now))  # back: it refreshed
    assert [w.id for w in await aw.workers()] == ["w1", "w2"]
    await store.remove_worker("w2")
    await store.remove_worker("nobody")
    assert [w.id for w in await aw.workers()] == ["w1"]


async def test_a_running_worker_shows_itself_and_withdraws_on_stop(
    make_aw: AwFactory, clock: FakeClock
) -> None:
    aw = make_aw(heartbeat_interval=0.05)
    gate = anyio.Event()
    started = anyio.Event()

    @aw.task
    async def hold(ctx: JobContext) -> None:
        started.set()
        await gate.wait()

    async with aw:
        job = await hold.enqueue()
        async with aw.worker(concurrency=3, queues=["default"]) as worker:
            with anyio.fail_after(10):
                await started.wait()

            async def running() -> list[WorkerInfo] | None:
                clock.advance(0.05)  # the heartbeat sleeps on the injected clock
                found = await aw.workers()
                return found if found and found[0].running == (job.id,) else None

            (seen,) = await eventually(running)
            assert seen.id == worker.id
            assert (seen.host, seen.pid, seen.version) == (
                socket.gethostname(),
                os.getpid(),
                __version__,
            )
            assert seen.queues == ("default",) and seen.concurrency == 3
            assert seen.expires_at == pytest.approx(seen.last_seen + 10.0)
            gate.set()
        assert await aw.workers() == []  # withdrawn on a graceful stop
        await aw.drain()
        assert await aw.workers() == []  # a burst drain is not a worker
