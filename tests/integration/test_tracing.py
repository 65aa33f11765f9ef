"""OpenTelemetry: a job enqueued in a traced request runs in a child span of its enqueue."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from afterwork import Afterwork, Retry

from ..servers import serve

pytestmark = pytest.mark.anyio


def attrs(item: Any) -> dict[str, Any]:
    """A span's or an event's attributes (never ``None``)."""
    return dict(item.attributes or {})


sdk = pytest.importorskip("opentelemetry.sdk.trace")


async def test_attempts_are_children_of_the_enqueue_in_the_request() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from afterwork.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test-app")
    aw = Afterwork("memory://")
    Tracing(aw, tracer_provider=provider)
    tries = {"n": 0}

    @aw.task(name="flaky", retries=1, backoff=Retry.fixed(0.0))
    async def flaky() -> str:
        tries["n"] += 1
        if tries["n"] == 1:
            raise ConnectionError("first try")
        return "ok"

    app = FastAPI(lifespan=aw.lifespan(worker=False))

    @app.post("/signup")
    async def signup() -> dict[str, str]:
        with tracer.start_as_current_span("POST /signup", kind=SpanKind.SERVER):
            job = await flaky.enqueue()
        return {"job": job.id}

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        job_id = (await client.post("/signup")).json()["job"]
        assert await aw.drain() == 2
    await aw.aclose()

    spans = {(s.name, attrs(s).get("afterwork.attempt")): s for s in exporter.get_finished_spans()}
    request = spans["POST /signup", None]
    enqueue = spans["enqueue flaky", None]
    first, second = spans["run flaky", 1], spans["run flaky", 2]
    assert enqueue.parent is not None and enqueue.parent.span_id == request.context.span_id
    assert enqueue.kind is SpanKind.PRODUCER
    for attempt in (first, second):
        assert attempt.kind is SpanKind.CONSUMER
        assert attempt.context.trace_id == request.context.trace_id
        assert attempt.parent is not None and attempt.parent.span_id == enqueue.context.span_id
        assert attrs(attempt)["afterwork.job.id"] == job_id
        assert attrs(attempt)["afterwork.task"] == "flaky"
        assert attrs(attempt)["afterwork.queue"] == "default"
    assert attrs(first)["afterwork.outcome"] == "retried"
    assert first.status.status_code is StatusCode.ERROR
    (event,) = first.events
    assert event.name == "exception"
    assert attrs(event)["exception.type"] == "ConnectionError"
    assert "first try" in attrs(event)["exception.stacktrace"]
    assert attrs(second)["afterwork.outcome"] == "succeeded"
    assert second.status.status_code is StatusCode.UNSET and not second.events
