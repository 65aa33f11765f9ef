"""Supervised services: readiness, restarts with backoff, status, bounded shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from fastapi import FastAPI

from afterwork import Afterwork, ConfigurationError, JobContext, Retry, ServiceContext, ServiceState
from afterwork._engine.services import Restart, ServiceSpec, ServiceStatus
from afterwork.exceptions import ServiceStartError
from afterwork.testing import FakeClock

from ..waiting import eventually

pytestmark = pytest.mark.anyio

NO_WAIT = Retry.fixed(0)


def crash_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "afterwork.services" and f"service {name} crashed" in r.getMessage()
    ]


async def test_crashes_twice_then_runs(caplog: pytest.LogCaptureFixture) -> None:
    aw = Afterwork("memory://")
    attempts = 0
    cancelled = 0
    running = anyio.Event()

    @aw.service(name="flaky", backoff=NO_WAIT)
    async def flaky(ctx: ServiceContext) -> None:
        nonlocal attempts, cancelled
        attempts += 1
        assert ctx.restarts == attempts - 1
        await anyio.lowlevel.checkpoint()  # started: the first await
        if attempts <= 2:
            raise RuntimeError(f"boom {attempts}")
        running.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            assert ctx.stopping
            raise

    assert aw.services[0].state is ServiceState.PENDING
    with caplog.at_level(logging.INFO, logger="afterwork.services"):
        async with aw, aw.runtime(worker=False):
            with anyio.fail_after(5):
                await running.wait()
            (status,) = aw.services
            assert status.state is ServiceState.RUNNING
            assert (status.restarts, status.crashes) == (2, 2)
            assert status.last_error is not None
            assert status.last_error.type == "RuntimeError"
            assert status.last_error.message == "boom 2"
            assert "raise RuntimeError" in status.last_error.traceback
            assert status.uptime is not None and status.uptime >= 0
            assert status.started_at is not None and status.started_at <= time.time()
            assert status.to_dict()["state"] == "running"
            assert cancelled == 0
    assert (attempts, cancelled) == (3, 1)
    crashes = crash_records(caplog, "flaky")
    assert len(crashes) == 2
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in crashes)
    (status,) = aw.services
    assert status.state is ServiceState.STOPPED
    assert (status.restarts, status.crashes) == (2, 2)
    assert status.uptime is None


async def test_ignoring_cancellation_does_not_hang_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aw = Afterwork("memory://")
    release = asyncio.Event()
    cancels = 0

    @aw.service(name="stubborn", shutdown_timeout=0.2)
    async def stubborn() -> None:
        nonlocal cancels
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancels += 1  # the bug under test: it swallows cancellation

    async with aw:
        async with aw.runtime(worker=False):
            stopping = time.monotonic()
        elapsed = time.monotonic() - stopping
    assert elapsed < 2.0  # its 0.2 s timeout plus scheduling slack, not forever
    assert cancels == 1
    assert "did not stop within 0.2s" in caplog.text
    (abandoned,) = aw.supervisor.abandoned
    release.set()
    with anyio.fail_after(5):
        await abandoned
    assert not aw.supervisor.abandoned


async def test_startup_failure_propagates_from_the_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aw = Afterwork("memory://")
    other_cancelled = anyio.Event()

    @aw.service(name="fine")
    async def fine() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            other_cancelled.set()

    @aw.service(name="broken")
    async def broken() -> None:
        raise ConnectionError("no broker")  # before its first await: it never started

    with pytest.raises(ServiceStartError, match="broken failed to start") as info:
        async with aw.lifespan(FastAPI()):
            pytest.fail("the app must not start")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.service == "broken"
    assert other_cancelled.is_set()
    states = {status.name: status.state for status in aw.services}
    assert states == {"fine": ServiceState.STOPPED, "broken": ServiceState.FAILED}
    assert "no broker" in caplog.text


async def test_explicit_readiness_gates_startup() -> None:
    aw = Afterwork("memory://")
    connected = anyio.Event()
    entered = anyio.Event()

    @aw.service(name="consumer", ready="explicit")
    async def consumer(ctx: ServiceContext) -> None:
        await connected.wait()  # connecting...
        ctx.ready()
        await ctx.wait_stopping()

    async def run() -> None:
        async with aw, aw.runtime(worker=False):
            entered.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert not entered.is_set()
        assert aw.services[0].state is ServiceState.STARTING
        connected.set()
        with anyio.fail_after(5):
            await entered.wait()
    assert aw.services[0].state is ServiceState.STOPPED


async def test_explicit_readiness_times_out() -> None:
    aw = Afterwork("memory://")

    @aw.service(name="silent", ready="explicit", startup_timeout=0.05)
    async def silent(ctx: ServiceContext) -> None:
        await anyio.sleep_forever()

    with pytest.raises(ServiceStartError, match=r"did not call ctx.ready\(\) within 0.05s"):
        async with aw, aw.runtime(worker=False):
            pytest.fail("the runtime must not start")


@pytest.mark.parametrize(
    ("restart", "raises", "state"),
    [
        ("never", True, ServiceState.FAILED),
        ("on-failure", False, ServiceState.STOPPED),
        ("never", False, ServiceState.STOPPED),
    ],
)
async def test_policies_that_leave_a_service_ended(
    restart: Restart, raises: bool, state: ServiceState
) -> None:
    aw = Afterwork("memory://")
    ended = anyio.Event()

    @aw.service(name="once", restart=restart, backoff=NO_WAIT)
    async def once() -> None:
        await anyio.lowlevel.checkpoint()
        ended.set()
        if raises:
            raise ValueError("bad")

    async with aw, aw.runtime(worker=False):
        with anyio.fail_after(5):
            await ended.wait()
            while aw.services[0].state not in (ServiceState.FAILED, ServiceState.STOPPED):
                await anyio.lowlevel.checkpoint()
        (status,) = aw.services
        assert status.state is state
        assert status.restarts == 0
        assert status.crashes == (1 if raises else 0)
    assert aw.services[0].state is state


async def test_always_restarts_a_service_that_returns() -> None:
    aw = Afterwork("memory://")
    runs = 0
    third = anyio.Event()

    @aw.service(name="pulse", restart="always", backoff=NO_WAIT)
    async def pulse() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()

    async with aw, aw.runtime(worker=False):
        with anyio.fail_after(5):
            await third.wait()
        (status,) = aw.services
        assert (status.restarts, status.crashes, status.last_error) == (2, 0, None)


def test_backoff_is_capped_exponential() -> None:
    async def svc() -> None: ...

    spec = ServiceSpec.of(svc, backoff=Retry.exponential(base=1.0, cap=8.0, jitter=False))
    rng = random.Random(0)
    assert [spec.restart_delay(n, rng) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    default = ServiceSpec.of(svc)
    assert all(0 <= default.restart_delay(n, rng) <= 60 for n in range(1, 20))


def test_bad_declarations() -> None:
    aw = Afterwork("memory://")

    with pytest.raises(TypeError, match="async def"):

        @aw.service  # type: ignore[arg-type]
        def sync() -> None: ...

    with pytest.raises(TypeError, match="'user_id' has no value"):

        @aw.service
        async def needs(user_id: int) -> None: ...

    with pytest.raises(TypeError, match="cannot be injected into a service"):

        @aw.service
        async def job_ctx(ctx: JobContext) -> None: ...

    odd_policy: Any = "sometimes"
    with pytest.raises(ConfigurationError, match="restart must be"):

        @aw.service(restart=odd_policy)
        async def odd() -> None: ...

    with pytest.raises(ConfigurationError, match="shutdown_timeout must be positive"):

        @aw.service(shutdown_timeout=0)
        async def hasty() -> None: ...

    @aw.service(name="dup")
    async def first() -> None: ...

    with pytest.raises(ValueError, match="already registered"):

        @aw.service(name="dup")
        async def second() -> None: ...


def test_a_task_cannot_take_a_service_context() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(TypeError, match="only services take a ServiceContext"):

        @aw.task
        async def job(ctx: ServiceContext) -> None: ...


def test_pending_status() -> None:
    aw = Afterwork("memory://")

    @aw.service
    async def plain(interval: float = 1.0) -> None: ...  # defaults are allowed

    assert aw.services[0].to_dict() == {
        "name": plain.__module__ + ":" + plain.__qualname__,
        "state": "pending",
        "restart": "on-failure",
        "restarts": 0,
        "crashes": 0,
        "last_error": None,
        "started_at": None,
        "uptime": None,
        "singleton": False,
    }


async def test_restart_backoff_waits_on_the_clock_and_resets_after_a_stable_run() -> None:
    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock)
    crash: asyncio.Queue[str] = asyncio.Queue()

    @aw.service(name="flaky", backoff=Retry.exponential(base=1.0, cap=8.0, jitter=False))
    async def flaky() -> None:
        raise RuntimeError(await crash.get())

    def status() -> ServiceStatus:
        (only,) = aw.services
        return only

    async def restarted(count: int) -> bool:
        current = status()
        return current.state is ServiceState.RUNNING and current.restarts == count

    async def crash_and_wait_out(delay: float, restarts: int) -> None:
        crash.put_nowait("boom")
        await clock.wait_sleepers(1)  # the supervisor waits out its backoff on the clock
        assert status().state is ServiceState.RESTARTING
        clock.advance(delay - 0.01)
        await anyio.lowlevel.checkpoint()
        assert status().state is ServiceState.RESTARTING  # not a moment early
        clock.advance(0.01)
        await eventually(lambda: restarted(restarts))

    async with aw, aw.runtime(worker=False):
        await crash_and_wait_out(1.0, restarts=1)  # 1 s after the first crash
        await crash_and_wait_out(2.0, restarts=2)  # then 2 s: consecutive crashes back off
        clock.advance(60)  # a run that lasts STABLE_AFTER resets the backoff
        assert status().uptime == pytest.approx(60.0)
        assert status().started_at == pytest.approx(clock() - 60)
        await crash_and_wait_out(1.0, restarts=3)
    assert status().crashes == 3
