"""The app of the cross-process tracing test: served by uvicorn, run by ``afterwork worker``.

Each process configures the OpenTelemetry SDK with an exporter that appends every finished
span as one JSON line to the file ``AFTERWORK_SPANS`` names (an in-memory exporter is per
process; the test reads both processes' files). The store comes from ``AFTERWORK_URL``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from afterwork import Afterwork, JobContext, Retry
from afterwork.tracing import Tracing


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file, one JSON object a line (ids as hex)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(_record(span)) + "\n" for span in spans]
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.writelines(lines)
        return SpanExportResult.SUCCESS


def _record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "pid": os.getpid(),
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "status": span.status.status_code.name,
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


provider = TracerProvider(resource=Resource.create({"service.name": "tracing-app"}))
provider.add_span_processor(
    SimpleSpanProcessor(JsonLinesExporter(Path(os.environ["AFTERWORK_SPANS"])))
)
tracer = provider.get_tracer("tracing-app")

aw = Afterwork()
Tracing(aw, tracer_provider=provider)


@aw.task(name="flaky", retries=1, backoff=Retry.fixed(0.0))
async def flaky(ctx: JobContext) -> str:
    """Fails its first attempt, succeeds on the second."""
    if ctx.job.attempts == 1:
        raise ConnectionError("first try")
    return "ok"


@aw.every(timedelta(seconds=1), name="tick")
async def tick() -> None:
    """A cron tick: its attempts are linked to the tick's enqueue, not its children."""


app = FastAPI(lifespan=aw.lifespan(worker=False))


@app.post("/signup")
async def signup(request: Request) -> dict[str, str]:
    """A traced request (what FastAPI's instrumentation does: the caller's context first)."""
    caller = propagate.extract(dict(request.headers))
    with tracer.start_as_current_span("POST /signup", context=caller, kind=SpanKind.SERVER):
        job = await flaky.enqueue()
    return {"job": job.id}


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
