"""``@aw.service(singleton=True)``: one instance across the processes sharing a store.

Two ``Afterwork`` instances on one store stand for two processes here (each has its own
holder identity); the real multi-process test is tests/acceptance/test_singleton_fleet.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from afterwork import Afterwork, ConfigurationError, ServiceContext, ServiceState
from afterwork._engine.services import lease_name
from afterwork.backends.base import Leases, WorkerInfo
from afterwork.backends.memory import MemoryBackend
from afterwork.exceptions import ServiceStartError
from afterwork.testing import FakeClock

from ..waiting import eventually

pytestmark = pytest.mark.anyio

TTL = 9.0


class NoLeases(MemoryBackend):
    """A store without the optional Leases protocol (``None`` marks it not implemented)."""

    acquire_lease = None  # type: ignore[assignment]


def fleet(
    clock: FakeClock, ledger: list[tuple[str, str]], count: int = 2
) -> tuple[MemoryBackend, list[Afterwork]]:
    store = MemoryBackend(clock=clock)
    members: list[Afterwork] = []
    for index in range(count):
        aw = Afterwork(backend=store, clock=clock)
        member = f"p{index}"

        def declare(aw: Afterwork, member: str) -> None:
            @aw.service(name="single", singleton=True, lease_ttl=TTL)
            async def single(ctx: ServiceContext) -> None:
                ledger.append((member, "start"))
                try:
                    await anyio.sleep_forever()
                finally:
                    ledger.append((member, "stop"))

        declare(aw, member)
        members.append(aw)
    return store, members


def state(aw: Afterwork) -> ServiceState:
    (only,) = aw.services
    return only.state


def running(ledger: list[tuple[str, str]]) -> set[str]:
    now: set[str] = set()
    for member, event in ledger:
        if event == "start":
            assert not now, f"{member} started while {now} ran"
            now.add(member)
        else:
            now.discard(member)
    return now


@asynccontextmanager
async def runtimes(*members: Afterwork) -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        for aw in members:
            await stack.enter_async_context(aw)
        yield stack


async def test_one_process_runs_it_the_other_stands_by_then_takes_over() -> None:
    clock = FakeClock()
    ledger: list[tuple[str, str]] = []
    store, (first, second) = fleet(clock, ledger)
    first_up, stop_first, first_down = anyio.Event(), anyio.Event(), anyio.Event()

    async def run_first() -> None:  # its own task: stopped while the second runs on
        async with first.runtime(worker=False):
            first_up.set()
            await stop_first.wait()
        first_down.set()

    async with runtimes(first, second), anyio.create_task_group() as group:
        group.start_soon(run_first)
        with anyio.fail_after(10):
            await first_up.wait()
        assert state(first) is ServiceState.RUNNING and running(ledger) == {"p0"}
        async with second.runtime(worker=False):  # standby counts as started
            assert state(second) is ServiceState.STANDBY
            (lease,) = await store.list_leases()
            assert lease.name == lease_name("single")
            assert lease.holder == first.supervisor.holder
            (instance,) = await second.service_instances()
            assert (instance.service, instance.singleton, instance.local) == ("single", True, False)
            for _ in range(3):  # renewals keep it with the first (none is lost)
                clock.advance(TTL / 3)
                await eventually(lambda: _renewed(store, clock))
            assert running(ledger) == {"p0"}
            stop_first.set()  # a graceful stop releases the lease at once
            with anyio.fail_after(10):
                await first_down.wait()
            assert await store.list_leases() == []
            clock.advance(TTL / 5)  # the standby's next try
            await eventually(lambda: _is(second, ServiceState.RUNNING))
            assert running(ledger) == {"p1"}
            assert [(i.service, i.local) for i in await second.service_instances()] == [
                ("single", True)
            ]
    assert ledger == [("p0", "start"), ("p0", "stop"), ("p1", "start"), ("p1", "stop")]


async def _renewed(store: Leases, clock: FakeClock) -> bool:
    leases = await store.list_leases()
    return bool(leases) and leases[0].expires_at == clock() + TTL


async def _is(aw: Afterwork, expected: ServiceState) -> bool:
    return state(aw) is expected


async def test_a_holder_that_loses_its_lease_stops_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    ledger: list[tuple[str, str]] = []
    store, (first,) = fleet(clock, ledger, count=1)
    renew = store.renew_lease
    stolen: list[str] = []

    async def frozen_then_renew(name: str, token: str, *, ttl: float) -> bool:
        # The holder froze (a GC pause, SIGSTOP) past its lease, and another process took
        # the lease meanwhile: the renewal reaches the store too late.
        if not stolen:
            clock.advance(2 * TTL)
            stolen.append(await _steal(store))
        return await renew(name, token, ttl=ttl)

    store.renew_lease = frozen_then_renew  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="afterwork.services"):
        async with first, first.runtime(worker=False):
            assert running(ledger) == {"p0"}
            clock.advance(TTL / 3)
            await eventually(lambda: _is(first, ServiceState.STANDBY))
            assert ("p0", "stop") in ledger
            (lease,) = await store.list_leases()
            assert lease.holder == "thief"  # the stale holder released nothing
            clock.advance(TTL / 5)
            await clock.wait_sleepers(1)
            assert state(first) is ServiceState.STANDBY
            assert await store.release_lease(lease_name("single"), stolen[0])
            clock.advance(TTL / 5)
            await eventually(lambda: _is(first, ServiceState.RUNNING))  # back once free
    (lost,) = [r for r in caplog.records if "lost its lease" in r.getMessage()]
    assert "another process holds it" in lost.getMessage()
    assert ledger == [("p0", "start"), ("p0", "stop"), ("p0", "start"), ("p0", "stop")]


async def _steal(store: Leases) -> str:
    token = await store.acquire_lease(lease_name("single"), "thief", ttl=100 * TTL)
    assert token is not None
    return token


async def test_a_holder_that_cannot_reach_the_store_stops_within_its_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    ledger: list[tuple[str, str]] = []
    store, (only,) = fleet(clock, ledger, count=1)
    failures = 0
    renew = store.renew_lease

    async def unreachable(name: str, token: str, *, ttl: float) -> bool:
        nonlocal failures
        if broken:
            failures += 1
            raise ConnectionError("store unreachable")
        return await renew(name, token, ttl=ttl)

    async def failed(count: int) -> bool:
        return failures == count

    broken = False
    store.renew_lease = unreachable  # type: ignore[method-assign]
    caplog.set_level(logging.DEBUG, logger="afterwork.services")
    async with only, only.runtime(worker=False):
        assert running(ledger) == {"p0"}
        broken = True
        for count in (1, 2):  # two failed renewals: still within the lease
            clock.advance(TTL / 3)
            await eventually(lambda: failed(count))  # noqa: B023
        clock.advance(TTL * 0.9 - 2 * TTL / 3 - 0.05)
        await anyio.lowlevel.checkpoint()
        assert running(ledger) == {"p0"}
        # Nine tenths of the lease after the last renewal: it stops before the store
        # could let another process take the lease.
        clock.advance(0.05)
        await eventually(lambda: _is(only, ServiceState.STANDBY))
        assert ("p0", "stop") in ledger
        assert failures == 2
    errors = [r.levelno for r in caplog.records if "could not renew" in r.getMessage()]
    assert errors == [logging.WARNING, logging.DEBUG]  # one warning per run of errors


def test_a_store_without_leases_refuses_a_singleton_at_declaration() -> None:
    aw = Afterwork(backend=NoLeases())
    with pytest.raises(ConfigurationError, match="keeps no leases"):

        @aw.service(singleton=True)
        async def single() -> None: ...

    @aw.service  # one per process needs no lease
    async def plain() -> None: ...


async def test_a_store_without_leases_refuses_a_singleton_at_runtime_start() -> None:
    aw = Afterwork("memory://")

    @aw.service(singleton=True)
    async def single() -> None: ...

    aw.backend = NoLeases()  # swapped after declaration: refused when the runtime starts
    async with aw:
        with pytest.raises(ConfigurationError, match="keeps no leases"):
            async with aw.runtime(worker=False):
                pass


def test_lease_ttl_applies_to_singletons_only() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ConfigurationError, match="singletons only"):

        @aw.service(lease_ttl=5)
        async def plain() -> None: ...


async def test_instances_list_every_process_with_host_and_pid() -> None:
    clock = FakeClock()
    store = MemoryBackend(clock=clock)
    aw = Afterwork(backend=store, clock=clock)

    @aw.service(name="everywhere")
    async def everywhere() -> None:
        await anyio.sleep_forever()

    @aw.service(name="single", singleton=True, lease_ttl=TTL)
    async def single() -> None:
        await anyio.sleep_forever()

    now = clock()
    # Another process: its worker runs both (presence lags a takeover; for a singleton
    # the lease is the truth), and it holds the singleton's lease.
    other = WorkerInfo(
        id="w-other",
        host="elsewhere",
        pid=4242,
        version="v",
        queues=None,
        concurrency=1,
        started_at=now,
        last_seen=now,
        expires_at=now + 100 * TTL,
        services=("everywhere", "single"),
    )
    await store.announce_worker(other)
    holder = '{"host":"elsewhere","pid":4242,"id":"x"}'
    assert await store.acquire_lease(lease_name("single"), holder, ttl=100 * TTL)
    async with aw, aw.runtime():
        assert {s.name: s.state for s in aw.services} == {
            "everywhere": ServiceState.RUNNING,
            "single": ServiceState.STANDBY,
        }

        async def announced() -> WorkerInfo | None:
            mine = [w for w in await aw.workers() if w.id != "w-other"]
            return mine[0] if mine else None

        worker = await eventually(announced)
        assert worker.services == ("everywhere",)  # a standby singleton is not running here
        found = [
            (i.service, i.host, i.pid, i.singleton, i.local, i.state.value)
            for i in await aw.service_instances()
        ]
        here = (worker.host, worker.pid)
        assert found == [
            ("everywhere", *here, False, True, "running"),
            ("everywhere", "elsewhere", 4242, False, False, "running"),
            ("single", "elsewhere", 4242, True, False, "running"),
        ]


async def test_a_holder_that_fails_to_start_fails_the_runtime_and_frees_the_lease() -> None:
    clock = FakeClock()
    store = MemoryBackend(clock=clock)
    aw = Afterwork(backend=store, clock=clock)

    @aw.service(name="single", singleton=True, lease_ttl=TTL)
    async def single() -> None:
        raise RuntimeError("no broker")

    async with aw:
        with pytest.raises(ServiceStartError, match="no broker"):
            async with aw.runtime(worker=False):
                pass
        assert await store.list_leases() == []  # a peer may try at once


async def test_a_singleton_that_ended_keeps_its_lease_until_its_process_stops() -> None:
    clock = FakeClock()
    store = MemoryBackend(clock=clock)
    ledger: list[str] = []
    members = [Afterwork(backend=store, clock=clock) for _ in range(2)]
    for index, aw in enumerate(members):

        def declare(aw: Afterwork, member: str) -> None:
            @aw.service(name="once", singleton=True, lease_ttl=TTL, restart="never")
            async def once() -> None:
                ledger.append(member)
                await anyio.lowlevel.checkpoint()  # started, then done

        declare(aw, f"p{index}")
    first, second = members
    first_up, stop_first = anyio.Event(), anyio.Event()

    async def run_first() -> None:
        async with first.runtime(worker=False):
            first_up.set()
            await stop_first.wait()

    async with runtimes(first, second), anyio.create_task_group() as group:
        group.start_soon(run_first)
        with anyio.fail_after(10):
            await first_up.wait()
        await eventually(lambda: _is(first, ServiceState.STOPPED))
        async with second.runtime(worker=False):
            for _ in range(3):  # ended, but still held: nobody else starts it again
                clock.advance(TTL / 3)
                await eventually(lambda: _renewed(store, clock))
            assert state(second) is ServiceState.STANDBY and ledger == ["p0"]
            stop_first.set()  # its process stops: the lease is free, a peer runs it
            await eventually(lambda: _no_lease(store))
            clock.advance(TTL / 5)
            await eventually(lambda: _ran(ledger, ["p0", "p1"]))


async def _no_lease(store: Leases) -> bool:
    return await store.list_leases() == []


async def _ran(ledger: list[str], expected: list[str]) -> bool:
    return ledger == expected
