"""The REST API and the event stream, against a real uvicorn server on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import httpx
import pytest

from afterwork import Afterwork, JobContext, JobEvent
from afterwork.job import new_job_id

from ..waiting import eventually
from .conftest import AUTH, CSRF, EventReader, make_app, serve

pytestmark = pytest.mark.anyio

POST = {**AUTH, **CSRF}


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://")
    yield instance
    await instance.aclose()


@pytest.fixture
def gate() -> anyio.Event:
    return anyio.Event()


@pytest.fixture
def tasks(aw: Afterwork, gate: anyio.Event) -> None:
    @aw.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @aw.task(name="hold")
    async def hold(ctx: JobContext) -> str:
        ctx.progress(0.5, "waiting at the gate")
        await gate.wait()
        return "released"

    @aw.task(name="parked", queue="parked")  # no worker serves this queue in these tests
    async def parked(n: int) -> int:
        return n


@pytest.fixture
async def client(aw: Afterwork, tasks: None) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app(aw, heartbeat=0.2)) as url:
        async with httpx.AsyncClient(base_url=f"{url}/afterwork", timeout=10) as client:
            yield client


async def enqueue(client: httpx.AsyncClient, task: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/tasks/{task}/enqueue", json=body, headers=POST)
    assert response.status_code == 201, response.text
    return cast("dict[str, Any]", response.json())


async def test_an_enqueued_jobs_events_arrive_on_the_stream(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(10):
        async with client.stream("GET", "/events", headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = EventReader(response)
            ready = await events.until("ready")
            assert ready.data == {"resumed": False}  # no Last-Event-ID: nothing to resume

            job = await enqueue(client, "add", args=[2], kwargs={"b": 3})
            kinds = []
            while True:
                message = await events.until("message", job_id=job["id"])
                kinds.append(message.data["kind"])
                if message.data["status"] == "succeeded":
                    break
            assert kinds == ["enqueued", "started", "succeeded"]
            assert message.data["task"] == "add" and message.data["queue"] == "default"

    done = (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json()
    assert done["status"] == "succeeded" and done["result"] == 5
    assert done["args"] == [2, 3] and done["kwargs"] == {}  # bound like the signature


async def test_the_stream_filters_by_job_and_sends_heartbeats(
    client: httpx.AsyncClient, gate: anyio.Event
) -> None:
    held = await enqueue(client, "hold")
    with anyio.fail_after(10):
        async with client.stream("GET", f"/events?job={held['id']}", headers=AUTH) as response:
            events = EventReader(response)
            await events.until("ready")
            other = await enqueue(client, "add", args=[1, 1])
            # Idle (the only job of interest waits at its gate): a heartbeat comes.
            while (message := await events.next()) is not None and message.comment is None:
                assert message.data.get("job_id") in (None, held["id"])
            assert message is not None and message.comment == "ping"
            gate.set()
            message = await events.until("message", status="succeeded")
            assert message.data["job_id"] == held["id"]
    assert (await client.get(f"/jobs/{other['id']}", headers=AUTH)).json()["result"] == 2


async def test_cancel_and_retry(
    client: httpx.AsyncClient, aw: Afterwork, gate: anyio.Event
) -> None:
    with anyio.fail_after(10):
        async with client.stream("GET", "/events", headers=AUTH) as response:
            events = EventReader(response)
            await events.until("ready")
            job = await enqueue(client, "hold")
            await events.until("message", job_id=job["id"], kind="started")

            cancelled = await client.post(f"/jobs/{job['id']}/cancel", headers=POST)
            assert cancelled.status_code == 200, cancelled.text
            await events.until("message", job_id=job["id"], status="cancelled")
            shown = (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json()
            assert shown["status"] == "cancelled"
            assert shown["progress"] == 0.5 and shown["progress_message"] == "waiting at the gate"
            again = await client.post(f"/jobs/{job['id']}/cancel", headers=POST)
            assert again.status_code == 409

            gate.set()
            retried = await client.post(f"/jobs/{job['id']}/retry", headers=POST)
            assert retried.status_code == 200, retried.text
            assert retried.json()["status"] == "queued"
            await events.until("message", job_id=job["id"], status="succeeded")

    done = (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json()
    assert done["status"] == "succeeded" and done["result"] == "released"
    assert (await client.post(f"/jobs/{job['id']}/retry", headers=POST)).status_code == 409


async def test_unknown_ids_and_tasks_are_404(client: httpx.AsyncClient) -> None:
    unknown = new_job_id()
    assert (await client.get(f"/jobs/{unknown}", headers=AUTH)).status_code == 404
    assert (await client.post(f"/jobs/{unknown}/cancel", headers=POST)).status_code == 404
    assert (await client.post(f"/jobs/{unknown}/retry", headers=POST)).status_code == 404
    response = await client.post("/tasks/nope/enqueue", json={}, headers=POST)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"args": [1, "x"]}, ["body", "args", "b"]),
        ({"args": [1], "kwargs": {"b": {"nested": True}}}, ["body", "kwargs", "b"]),
        ({"args": [1]}, ["body"]),  # a missing argument
        ({"args": [1, 2, 3]}, ["body"]),  # one too many
        ({"args": [1, 2], "options": {"delay": -1}}, ["body", "options", "delay"]),
        ({"args": [1, 2], "options": {"colour": "red"}}, ["body", "options", "colour"]),
        ({"args": [1, 2], "options": {"priority": "high"}}, ["body", "options", "priority"]),
        ({"args": [1, 2], "options": {"queue": ""}}, ["body", "options", "queue"]),
        ({"args": {"a": 1}}, ["body", "args"]),
        ({"args": [1, 2], "extra": 1}, ["body", "extra"]),
    ],
)
async def test_bad_enqueue_bodies_get_422_naming_the_field(
    client: httpx.AsyncClient, aw: Afterwork, body: dict[str, Any], loc: list[Any]
) -> None:
    response = await client.post("/tasks/add/enqueue", json=body, headers=POST)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"] == loc for error in detail), detail
    assert await aw.list_jobs() == []  # nothing was stored


async def test_bodies_that_are_not_json_values_are_rejected(
    client: httpx.AsyncClient, aw: Afterwork, tasks: None
) -> None:
    @aw.task(name="echo")
    async def echo(value: Any) -> Any:
        return value

    for raw in [b"not json", b'{"args": [NaN]}', b'{"args": ["\\ud800"]}']:
        response = await client.post(
            "/tasks/echo/enqueue",
            content=raw,
            headers={**POST, "Content-Type": "application/json"},
        )
        assert response.status_code in (400, 422), (raw, response.text)
    assert await aw.list_jobs() == []


async def test_oversized_bodies_get_413(client: httpx.AsyncClient, aw: Afterwork) -> None:
    limit = aw.config.max_payload + 64 * 1024
    big = {"args": [1, 2], "kwargs": {}, "options": {"key": "k"}, "pad": "x" * limit}
    response = await client.post("/tasks/add/enqueue", json=big, headers=POST)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        yield b'{"args": ["'
        for _ in range(32):
            yield b"x" * (64 * 1024)
        yield b'"]}'

    # (tests/unit/fastapi/test_router.py proves the app stops reading at the limit.)
    try:
        response = await client.post("/tasks/add/enqueue", content=chunks(), headers=POST)
    except httpx.HTTPError:
        pass  # the server may close the connection while the client still sends
    else:
        assert response.status_code == 413
    assert await aw.list_jobs() == []


async def test_list_jobs_filters_and_pages_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await enqueue(client, "parked", args=[n]))["id"] for n in range(5)]
    page = (await client.get("/jobs?limit=2&queue=parked", headers=AUTH)).json()
    assert [job["id"] for job in page["jobs"]] == ids[::-1][:2]
    seen = [job["id"] for job in page["jobs"]]
    while page["next_cursor"]:
        page = (
            await client.get(
                f"/jobs?limit=2&queue=parked&before={page['next_cursor']}", headers=AUTH
            )
        ).json()
        seen += [job["id"] for job in page["jobs"]]
    assert seen == ids[::-1]

    by_task = (await client.get("/jobs?task=parked&status=queued", headers=AUTH)).json()
    assert len(by_task["jobs"]) == 5
    for query in ["status=succeeded", "queue=default", "task=add", "queue=%2A", "task=%3F"]:
        assert (await client.get(f"/jobs?{query}", headers=AUTH)).json()["jobs"] == []
    quoted = "queue=%27%3B%20DROP%20TABLE%20jobs%3B--"
    assert (await client.get(f"/jobs?{quoted}", headers=AUTH)).json()["jobs"] == []
    assert (await client.get("/jobs?limit=1000", headers=AUTH)).status_code == 422
    assert (await client.get("/jobs?status=bogus", headers=AUTH)).status_code == 422


async def test_queues_and_tasks(client: httpx.AsyncClient) -> None:
    await enqueue(client, "parked", args=[1])
    await enqueue(client, "parked", args=[2], options={"delay": 3600})
    queues = {q["queue"]: q for q in (await client.get("/queues", headers=AUTH)).json()}
    parked = queues["parked"]
    assert parked["counts"]["queued"] == 1 and parked["counts"]["scheduled"] == 1
    assert parked["total"] == 2
    assert parked["oldest_waiting_age"] is not None and parked["oldest_waiting_age"] >= 0

    tasks = {t["name"]: t for t in (await client.get("/tasks", headers=AUTH)).json()}
    assert set(tasks) == {"add", "hold", "parked"}
    assert tasks["add"]["arguments"]["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": "integer"},
    }
    assert tasks["add"]["arguments"]["required"] == ["a", "b"]
    assert tasks["hold"]["arguments"]["properties"] == {}  # the context is injected
    assert tasks["parked"]["queue"] == "parked"


async def test_the_stream_ends_when_the_client_goes_away(
    client: httpx.AsyncClient, aw: Afterwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = anyio.Event()
    subscribe = aw.backend.events

    class Tracked:
        """The store's event stream, telling the test when the server closes it."""

        def __init__(self) -> None:
            self.inner = subscribe()

        def __aiter__(self) -> Tracked:
            return self

        async def __anext__(self) -> JobEvent:
            return await anext(self.inner)

        async def aclose(self) -> None:
            await self.inner.aclose()
            closed.set()

    monkeypatch.setattr(aw.backend, "events", Tracked)
    with anyio.fail_after(10):
        async with client.stream("GET", "/events", headers=AUTH) as response:
            await EventReader(response).until("ready")
        # The client closed the connection: the server unsubscribes (within a heartbeat).
        await closed.wait()


async def test_the_stream_ends_when_afterwork_closes(
    client: httpx.AsyncClient, aw: Afterwork
) -> None:
    with anyio.fail_after(10):
        async with client.stream("GET", "/events", headers=AUTH) as response:
            events = EventReader(response)
            await events.until("ready")
            await aw.aclose()  # what the lifespan does at shutdown
            while (message := await events.next()) is not None:
                assert message.comment == "ping" or message.event == "message"


async def test_a_job_shows_its_attempts(client: httpx.AsyncClient, aw: Afterwork) -> None:
    job = await enqueue(client, "add", args=[1, 2])
    done = await aw.wait_for_job(job["id"], timeout=10)
    body = (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json()
    (attempt,) = body["timeline"]
    assert attempt["number"] == 1 and attempt["outcome"] == "succeeded"
    assert attempt["error"] is None and attempt["worker"] == done.timeline[0].worker
    assert attempt["started_at"] == done.started_at and attempt["ended_at"] == done.finished_at


async def test_the_lifespan_worker_is_listed(client: httpx.AsyncClient, aw: Afterwork) -> None:
    async def listed() -> list[Any] | None:
        body = (await client.get("/workers", headers=AUTH)).json()
        return cast("list[Any]", body) or None

    (worker,) = await eventually(listed)
    assert worker["queues"] == ["default"] and worker["running"] == []
    assert [w.id for w in await aw.workers()] == [worker["id"]]
    assert (await client.get("/workers")).status_code == 401
