"""A store outage in a worker's log: one warning when it begins, one when it ends.

A real redis-server is killed under a running worker and started again on the same port.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from afterwork import Afterwork, JobStatus
from afterwork._engine.outage import MAX_RECONNECT_DELAY, reconnect_delay

from ..redis_server import RedisServer
from ..waiting import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()


def test_the_reconnect_backoff_is_capped_at_five_seconds() -> None:
    assert [round(reconnect_delay(n, 1.0), 2) for n in range(1, 8)] == [
        0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0,
    ]  # fmt: skip
    assert reconnect_delay(10_000, 0.999) <= MAX_RECONNECT_DELAY
    assert reconnect_delay(3, 0.0) == pytest.approx(0.4)  # jitter takes up to half off


async def test_an_outage_logs_once_when_it_begins_and_once_when_it_ends(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    aw = Afterwork(server.url, poll_interval=0.05, heartbeat_interval=0.1, reaper_interval=0.1)

    @aw.task
    async def ping() -> str:
        return "pong"

    def actions(*names: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "action", None) in names]

    caplog.set_level(logging.DEBUG, logger="afterwork")
    async with aw, aw.worker(concurrency=2):
        first = await ping.enqueue()
        assert (await first.wait(timeout=10)).status is JobStatus.SUCCEEDED
        server.kill()

        async def began() -> bool:
            return bool(actions("store_unreachable"))

        await eventually(began, timeout=20)

        async def retried_twice() -> bool:
            return len(actions("store_retry_failed")) >= 2

        await eventually(retried_twice, timeout=30)
        server.start()

        async def ended() -> bool:
            return bool(actions("store_reachable"))

        await eventually(ended, timeout=30)
        second = await ping.enqueue()
        with anyio.fail_after(20):
            assert (await second.wait(timeout=20)).status is JobStatus.SUCCEEDED

    (begin,) = actions("store_unreachable")
    (end,) = actions("store_reachable")
    assert begin.levelno == end.levelno == logging.WARNING
    assert begin.exc_info is not None  # the first failure's traceback, once
    outage = end.outage  # type: ignore[attr-defined]
    assert outage["failures"] >= 3 and outage["seconds"] > 0
    assert f"{outage['failures']} failed call(s)" in end.getMessage()
    retries = actions("store_retry_failed")
    assert retries and all(r.levelno == logging.DEBUG and r.exc_info is None for r in retries)
    assert all(r.retry_in <= MAX_RECONNECT_DELAY for r in retries if hasattr(r, "retry_in"))
    # Nothing else from the worker reached WARNING with a traceback during the outage.
    noisy = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.exc_info
        and r is not begin
        and r.name.startswith("afterwork")
    ]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_readiness_follows_the_store(server: RedisServer) -> None:
    from afterwork.cli import _side_ports

    async with Afterwork(server.url) as aw:
        (health,) = await _side_ports(aw, None, "127.0.0.1", 0, "127.0.0.1")
        try:
            host, port = health.sockets[0].getsockname()[:2]
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
                assert (await client.get("/readyz")).status_code == 200
                server.kill()
                down = await client.get("/readyz")
                assert down.status_code == 503 and down.text.startswith("store unreachable")
                assert (await client.get("/livez")).status_code == 200  # alive all the same
                server.start()

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await eventually(ready, timeout=30)
        finally:
            health.close()
            await health.wait_closed()
