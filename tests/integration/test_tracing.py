"""OpenTelemetry: a job enqueued in a traced request runs in a child span of its enqueue."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from afterwork import Afterwork, Retry

from ..servers import serve
from ..waiting import eventually

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


# -- across processes: a uvicorn app enqueues, a worker process runs -------------------------

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.tracing_app"
TICK = f"{APP}:tick"  # the task of the "tick" schedule


def _spawn(args: list[str], url: str, spans: Path, log: Path, **popen: Any) -> Popen[bytes]:
    env = {
        **os.environ,
        "AFTERWORK_URL": url,
        "AFTERWORK_SPANS": str(spans),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    with log.open("ab") as out:
        return Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )


def _spans(*files: Path) -> list[dict[str, Any]]:
    found = []
    for path in files:
        if path.exists():
            found += [json.loads(line) for line in path.read_text().splitlines() if line]
    return found


def _stop(proc: Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"])
async def test_a_worker_process_continues_the_requests_trace(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The acceptance test of issue 15's tracing line: the trace context travels in the
    store. uvicorn (a subprocess) serves a traced request that enqueues a job; an
    ``afterwork worker`` process runs it. Each process exports its spans to a file of its
    own; the worker's attempt spans are in the request's trace, children of the enqueue
    span, and a cron tick's attempt is linked to its tick instead."""
    if store == "sqlite":
        url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    elif store == "redis":
        url = f"{request.getfixturevalue('redis_url')}?prefix=afterwork:tr{uuid.uuid4().hex[:12]}"
    else:
        url = f"{request.getfixturevalue('postgres_url')}?schema=tr{uuid.uuid4().hex[:12]}"
    web_spans, worker_spans = tmp_path / "web.jsonl", tmp_path / "worker.jsonl"
    log = tmp_path / "processes.log"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = _spawn(
        ["uvicorn", f"{APP}:app", "--fd", str(sock.fileno()), "--log-level", "warning"],
        url,
        web_spans,
        log,
        pass_fds=(sock.fileno(),),
    )
    sock.close()  # uvicorn holds it now
    worker = _spawn(
        ["afterwork", "worker", f"{APP}:aw", "--concurrency", "2"], url, worker_spans, log
    )
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def up() -> bool:
                try:
                    return (await client.get("/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                await eventually(up, timeout=30)
            except TimeoutError:
                pytest.fail(f"uvicorn did not answer:\n{log.read_text()}")
            reply = await client.post(
                "/signup", headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}
            )
            assert reply.status_code == 200, log.read_text()
            job_id = reply.json()["job"]

        def attempts() -> list[dict[str, Any]]:
            return [
                s
                for s in _spans(worker_spans)
                if s["name"] == "run flaky" and s["attributes"]["afterwork.job.id"] == job_id
            ]

        def tick_runs() -> list[dict[str, Any]]:
            return [s for s in _spans(worker_spans) if s["name"] == f"run {TICK}"]

        async def seen() -> bool:
            return len(attempts()) == 2 and bool(tick_runs())

        try:
            await eventually(seen, timeout=30)
        except TimeoutError:
            spans = _spans(web_spans, worker_spans)
            pytest.fail(f"spans: {[s['name'] for s in spans]}\nlog:\n{log.read_text()}")
    finally:
        _stop(worker)
        _stop(web)
    (http,) = [s for s in _spans(web_spans) if s["name"] == "POST /signup"]
    (enqueue,) = [s for s in _spans(web_spans) if s["name"] == "enqueue flaky"]
    first, second = sorted(attempts(), key=lambda s: s["attributes"]["afterwork.attempt"])
    # The request continues its caller's trace; the enqueue is the request's child.
    assert (http["trace_id"], http["parent_span_id"]) == (trace_id, caller_span)
    assert enqueue["kind"] == "PRODUCER"
    assert (enqueue["trace_id"], enqueue["parent_span_id"]) == (trace_id, http["span_id"])
    assert not [s for s in _spans(web_spans) if s["name"] == "run flaky"]  # ran elsewhere
    for number, attempt in ((1, first), (2, second)):
        assert attempt["pid"] == worker.pid != http["pid"]
        assert attempt["kind"] == "CONSUMER"
        assert attempt["trace_id"] == trace_id
        assert attempt["parent_span_id"] == enqueue["span_id"]
        assert not attempt["links"]
        attributes = attempt["attributes"]
        assert attributes["afterwork.task"] == "flaky"
        assert attributes["afterwork.queue"] == "default"
        assert attributes["afterwork.job.id"] == job_id
        assert attributes["afterwork.attempt"] == number
        assert attributes["afterwork.worker"]
    assert first["attributes"]["afterwork.outcome"] == "retried"
    assert first["status"] == "ERROR"
    (event,) = first["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ConnectionError"
    assert event["attributes"]["exception.message"] == "first try"
    assert "first try" in event["attributes"]["exception.stacktrace"]
    assert second["attributes"]["afterwork.outcome"] == "succeeded"
    assert second["status"] == "UNSET" and not second["events"]
    # A cron tick: its attempt starts a trace of its own, linked to the tick's enqueue.
    ticks = {
        s["span_id"]: s
        for s in _spans(web_spans, worker_spans)
        if s["name"] == f"enqueue {TICK}" and s["attributes"]["afterwork.schedule"] == "tick"
    }
    for run in tick_runs():
        assert run["parent_span_id"] is None
        assert run["attributes"]["afterwork.schedule"] == "tick"
        (link,) = run["links"]
        origin = ticks[link["span_id"]]
        assert origin["attributes"]["afterwork.job.id"] == run["attributes"]["afterwork.job.id"]
        assert link["trace_id"] == origin["trace_id"] != run["trace_id"]
