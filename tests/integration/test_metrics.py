"""Prometheus metrics: a known mix of outcomes, scraped from ``GET /metrics`` of a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from afterwork import Afterwork, JobContext, JobStatus, Retry, ServiceContext, ServiceState
from afterwork.metrics import Metrics
from afterwork.testing import FakeClock

from ..servers import serve
from .conftest import AUTH, require_admin

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, *names: str) -> Samples:
    """The samples of the named metric families, keyed by sample name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        if family.name not in names:
            continue
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://", clock=FakeClock())
    yield instance
    await instance.aclose()


async def test_metrics_count_a_known_mix_of_outcomes_exactly(aw: Afterwork) -> None:
    metrics = Metrics(aw, cache_ttl=0.0)
    attempts: dict[str, int] = {}

    @aw.task(name="ok")
    async def ok(n: int) -> int:
        return n

    @aw.task(name="flaky", retries=1, backoff=Retry.fixed(0.0))
    async def flaky() -> None:
        attempts["flaky"] = attempts.get("flaky", 0) + 1
        if attempts["flaky"] == 1:
            raise ConnectionError("first try")

    @aw.task(name="broken")
    async def broken() -> None:
        raise ValueError("never")

    @aw.task(name="stop_me")
    async def stop_me(ctx: JobContext) -> None:
        await aw.cancel(ctx.job.id)
        await anyio.Event().wait()  # until the cancel reaches it

    @aw.task(name="parked", queue="parked")
    async def parked() -> None: ...

    app = FastAPI(lifespan=aw.lifespan(worker=False))
    app.include_router(aw.router(auth=Depends(require_admin), metrics=metrics), prefix="/aw")
    async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/aw") as client:
        await ok.enqueue(1)
        await ok.enqueue(2)
        first = await ok.options(key="k").enqueue(3)
        again = await ok.options(key="k").enqueue(3)  # a duplicate: not a new job
        assert again.id == first.id
        await flaky.enqueue()
        await broken.enqueue()
        await stop_me.enqueue()
        await parked.enqueue()
        with anyio.fail_after(10):
            assert await aw.drain(queues=["default"]) == 7

        assert (await client.get("/metrics")).status_code == 401  # behind the router's auth
        response = await client.get("/metrics", headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text

    def jobs(
        task: str, outcome: str, queue: str = "default"
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("afterwork_jobs_total", (("outcome", outcome), ("queue", queue), ("task", task)))

    assert samples(text, "afterwork_jobs") == {
        jobs("ok", "enqueued"): 3,
        jobs("ok", "started"): 3,
        jobs("ok", "succeeded"): 3,
        jobs("flaky", "enqueued"): 1,
        jobs("flaky", "started"): 2,
        jobs("flaky", "retried"): 1,
        jobs("flaky", "succeeded"): 1,
        jobs("broken", "enqueued"): 1,
        jobs("broken", "started"): 1,
        jobs("broken", "failed"): 1,
        jobs("stop_me", "enqueued"): 1,
        jobs("stop_me", "started"): 1,
        jobs("stop_me", "cancelled"): 1,
        jobs("parked", "enqueued", "parked"): 1,
    }
    counts = {"ok": 3, "flaky": 2, "broken": 1, "stop_me": 1}
    for family in ("afterwork_job_duration_seconds", "afterwork_job_wait_seconds"):
        found = samples(text, family)
        got = {
            dict(labels)["task"]: value
            for (name, labels), value in found.items()
            if name == f"{family}_count"
        }
        assert got == counts, family
    assert samples(text, "afterwork_workers") == {("afterwork_workers", ()): 0.0}  # drains only
    gauge = samples(text, "afterwork_queue_jobs")
    expected = {("default", s.value): 0.0 for s in JobStatus}
    expected |= {("parked", s.value): 0.0 for s in JobStatus}
    expected |= {
        ("default", "succeeded"): 4.0,
        ("default", "failed"): 1.0,
        ("default", "cancelled"): 1.0,
        ("parked", "queued"): 1.0,
    }
    assert {
        (dict(labels)["queue"], dict(labels)["status"]): value
        for (_, labels), value in gauge.items()
    } == expected


async def test_the_wait_histogram_measures_due_time_to_start() -> None:
    clock = FakeClock()
    async with Afterwork("memory://", clock=clock) as aw:
        metrics = Metrics(aw)

        @aw.task(name="later")
        async def later() -> None: ...

        await later.enqueue()
        clock.advance(7.0)  # due at once, started 7 s later
        await aw.drain()
        text = (await metrics.exposition()).decode()
    found = samples(text, "afterwork_job_wait_seconds")
    key = ("afterwork_job_wait_seconds_sum", (("queue", "default"), ("task", "later")))
    assert found[key] == pytest.approx(7.0, abs=1e-3)


async def test_a_router_without_metrics_serves_none(aw: Afterwork) -> None:
    app = FastAPI(lifespan=aw.lifespan(worker=False))
    app.include_router(aw.router(auth=Depends(require_admin)), prefix="/aw")
    async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/aw") as client:
        assert (await client.get("/metrics", headers=AUTH)).status_code == 404


async def test_services_show_their_state() -> None:
    aw = Afterwork("memory://")
    metrics = Metrics(aw)
    up = anyio.Event()

    @aw.service
    async def ticker(ctx: ServiceContext) -> None:
        up.set()
        await ctx.wait_stopping()

    async with aw.lifespan(FastAPI()):
        with anyio.fail_after(10):
            await up.wait()
        text = (await metrics.exposition()).decode()
    found = {
        dict(labels)["state"]: value
        for (_, labels), value in samples(text, "afterwork_services").items()
        if dict(labels)["name"].endswith("ticker")
    }
    assert found == {state.value: float(state == "running") for state in ServiceState}
