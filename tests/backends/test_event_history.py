"""Every store keeps a bounded history of its events, and a reader can resume after an id.

The contract (``EventHistory`` in ``afterwork/backends/base.py``): ``events(since=id)`` yields
the events after ``id`` in order, then live ones, none missed and none twice, even while
events are being published; when the history no longer reaches back to ``id`` a
``truncated`` marker comes first. Run on every store, then end to end over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, cast

import anyio
import httpx
import pytest

from afterwork import Afterwork, JobContext, JobEvent
from afterwork.backends.base import TRUNCATED, EventHistory, EventStream, NewJob, Store
from afterwork.job import new_job_id
from afterwork.testing import FakeClock

from ..integration.conftest import AUTH, CSRF, EventReader, Message, make_app
from ..servers import serve

pytestmark = pytest.mark.anyio

POST = {**AUTH, **CSRF}


def new(task: str = "t") -> NewJob:
    return NewJob(id=new_job_id(), task=task, queue="parked")


def order(event_id: str | None) -> tuple[int, ...]:
    """An event id as something that sorts: ``"12"`` → (12,), ``"1700000000000-3"`` → (…, 3)."""
    assert event_id is not None
    return tuple(int(part) for part in event_id.split("-"))


def with_retention(url: str, backend_name: str, count: int) -> str:
    option = "events_maxlen" if backend_name.startswith("redis") else "event_retention"
    return f"{url}{'&' if '?' in url else '?'}{option}={count}"


async def read_until(stream: EventStream, job_id: str, into: list[JobEvent]) -> None:
    """Read ``stream`` into ``into`` until the event of ``job_id``."""
    while True:
        event = await anext(stream)
        into.append(event)
        if event.job_id == job_id:
            return


class HistoryStore(EventHistory, Store, Protocol):
    """A store that keeps its event history (every store of afterwork's own)."""


def history(aw: Afterwork) -> HistoryStore:
    backend = aw.backend
    assert isinstance(backend, EventHistory)
    return cast("HistoryStore", backend)


async def test_every_store_keeps_a_history(aw: Afterwork) -> None:
    assert history(aw).event_retention == 10_000


async def test_events_have_ids_in_publishing_order(aw: Afterwork) -> None:
    backend = history(aw)
    stream = backend.events()
    try:
        jobs = await backend.enqueue([new(f"t{i}") for i in range(5)])
        events: list[JobEvent] = []
        with anyio.fail_after(10):
            await read_until(stream, jobs[-1].id, events)
    finally:
        await stream.aclose()
    assert [e.job_id for e in events] == [j.id for j in jobs]
    keys = [order(e.id) for e in events]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_resume_from_the_middle_while_events_are_published(aw: Afterwork) -> None:
    """The replay and the live tail meet exactly: no gap, no duplicate, same order."""
    backend = history(aw)
    everything = backend.events()  # the reference: one reader that never disconnects
    resumed: EventStream | None = None
    try:
        first = await backend.enqueue([new(f"a{i}") for i in range(10)])
        seen: list[JobEvent] = []
        with anyio.fail_after(10):
            await read_until(everything, first[-1].id, seen)
        since = seen[4].id  # the reader "disconnected" after the fifth event
        assert since is not None

        published: list[str] = []
        halfway = anyio.Event()

        async def publish() -> None:
            for i in range(40):
                (job,) = await backend.enqueue([new(f"b{i}")])
                published.append(job.id)
                if i == 10:
                    halfway.set()
                await anyio.lowlevel.checkpoint()

        got: list[JobEvent] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(publish)
                await halfway.wait()  # resume while the publisher is still writing
                resumed = backend.events(since=since)
                got.append(await anext(resumed))  # reads the replay as publishing goes on
            assert resumed is not None
            await read_until(resumed, published[-1], got)
            await read_until(everything, published[-1], seen)
    finally:
        await everything.aclose()
        if resumed is not None:
            await resumed.aclose()

    expected = [(e.id, e.job_id, e.kind) for e in seen[5:]]
    assert [(e.id, e.job_id, e.kind) for e in got] == expected
    assert [e.job_id for e in got] == [j.id for j in first[5:]] + published


async def test_resume_from_the_newest_id_gives_live_events_only(aw: Afterwork) -> None:
    backend = history(aw)
    stream = backend.events()
    resumed: EventStream | None = None
    try:
        (job,) = await backend.enqueue([new()])
        with anyio.fail_after(10):
            newest = await anext(stream)
            resumed = backend.events(since=newest.id)
            (later,) = await backend.enqueue([new("later")])
            event = await anext(resumed)
        assert (event.job_id, event.kind) == (later.id, "enqueued")
        assert order(event.id) > order(newest.id)
    finally:
        await stream.aclose()
        if resumed is not None:
            await resumed.aclose()


async def test_resume_past_the_retention_says_truncated(
    backend_name: str, backend_url: str, clock: FakeClock
) -> None:
    """A reader whose id fell out of the history is told so, never skipped past silently."""
    # Redis trims with MAXLEN ~ (whole nodes of 100 entries): 300 events drop the first ones.
    url = with_retention(backend_url, backend_name, 5)
    async with Afterwork(url, clock=clock) as aw:
        backend = history(aw)
        assert backend.event_retention == 5
        stream = backend.events()
        resumed: EventStream | None = None
        try:
            (oldest,) = await backend.enqueue([new()])
            with anyio.fail_after(10):
                first = await anext(stream)
                assert first.job_id == oldest.id
                await backend.enqueue([new(f"n{i}") for i in range(300)])
                resumed = backend.events(since=first.id)
                marker = await anext(resumed)
                assert (marker.kind, marker.job_id, marker.message) == (TRUNCATED, "", first.id)
                (later,) = await backend.enqueue([new("later")])
                after: list[JobEvent] = []
                await read_until(resumed, later.id, after)
            # After the marker: newer events only, in order, ending with the live one.
            keys = [order(e.id) for e in after]
            assert keys == sorted(keys) and keys[0] > order(first.id)
            assert all(e.kind != TRUNCATED for e in after)
            live: list[JobEvent] = []
            with anyio.fail_after(10):
                await read_until(stream, later.id, live)
            # A live reader more than the retention behind: all of them, or the marker first.
            lost = [e for e in live if e.kind == TRUNCATED]
            assert len(live) == 301 or (lost and lost[0] is live[0])
        finally:
            await stream.aclose()
            if resumed is not None:
                await resumed.aclose()


@pytest.mark.parametrize("since", ["not-an-id", "99999999999999999999"])
async def test_an_id_the_store_never_gave_says_truncated(aw: Afterwork, since: str) -> None:
    backend = history(aw)
    await backend.enqueue([new()])
    resumed = backend.events(since=since)
    try:
        with anyio.fail_after(10):
            marker = await anext(resumed)
            assert (marker.kind, marker.message) == (TRUNCATED, since)
            (later,) = await backend.enqueue([new("later")])
            after: list[JobEvent] = []
            await read_until(resumed, later.id, after)
        assert all(e.kind != TRUNCATED for e in after)
    finally:
        await resumed.aclose()


# -- end to end: uvicorn, an HTTP client that drops the stream and comes back ----------------


@asynccontextmanager
async def api(aw: Afterwork) -> AsyncIterator[httpx.AsyncClient]:
    @aw.task(name="parked", queue="parked")  # no worker serves this queue: one event per job
    async def parked(n: int) -> int:
        return n

    async with serve(make_app(aw, heartbeat=0.2)) as url:
        async with httpx.AsyncClient(base_url=f"{url}/afterwork", timeout=10) as client:
            yield client


async def post(client: httpx.AsyncClient, task: str, **body: object) -> str:
    response = await client.post(f"/tasks/{task}/enqueue", json=body, headers=POST)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def messages_through(events: EventReader, job_id: str) -> list[Message]:
    """Every message up to ``job_id``'s event, then none until a heartbeat (quiet)."""
    got: list[Message] = []
    while not got or got[-1].data.get("job_id") != job_id:
        message = await events.next()
        assert message is not None, "the stream ended"
        if message.comment is None:
            got.append(message)
    while (message := await events.next()) is not None and message.comment is None:
        got.append(message)  # anything here is one too many: the assertions show it
    assert message is not None, "the stream ended"
    return got


async def test_a_client_that_reconnects_with_last_event_id_gets_exactly_what_it_missed(
    backend_url: str,
) -> None:
    aw = Afterwork(backend_url)
    async with api(aw) as client:
        with anyio.fail_after(20):
            async with client.stream("GET", "/events", headers=AUTH) as response:
                events = EventReader(response)
                assert (await events.until("ready")).data == {"resumed": False}
                jobs = [await post(client, "parked", args=[i]) for i in range(3)]
                one = await events.until("message", job_id=jobs[0])
                two = await events.until("message", job_id=jobs[1])
                assert one.id is not None and two.id is not None
                assert one.data["id"] == one.id and order(one.id) < order(two.id)
            # Disconnected after the second event; the third one and two more are missed.
            jobs += [await post(client, "parked", args=[i]) for i in (3, 4)]
            headers = {**AUTH, "Last-Event-ID": two.id}
            async with client.stream("GET", "/events", headers=headers) as response:
                events = EventReader(response)
                assert (await events.until("ready")).data == {"resumed": True}
                jobs.append(await post(client, "parked", args=[5]))  # and one live
                got = await messages_through(events, jobs[-1])
    assert [(m.event, m.data["kind"], m.data["job_id"]) for m in got] == [
        ("message", "enqueued", job) for job in jobs[2:]
    ]
    ids = [order(m.id) for m in got]
    assert ids == sorted(ids) and ids[0] > order(two.id) and len(set(ids)) == len(ids)
    await aw.aclose()


async def test_since_in_the_url_resumes_too(backend_url: str) -> None:
    aw = Afterwork(backend_url)
    async with api(aw) as client:
        with anyio.fail_after(20):
            async with client.stream("GET", "/events", headers=AUTH) as response:
                events = EventReader(response)
                await events.until("ready")
                first = await post(client, "parked", args=[1])
                seen = await events.until("message", job_id=first)
            second = await post(client, "parked", args=[2])
            async with client.stream(
                "GET", "/events", params={"since": seen.id}, headers=AUTH
            ) as response:
                events = EventReader(response)
                assert (await events.until("ready")).data == {"resumed": True}
                got = await messages_through(events, second)
            assert [m.data["job_id"] for m in got] == [second]
            # An id older than anything kept (or not an id): a truncated event, then live.
            async with client.stream(
                "GET", "/events", params={"since": "junk"}, headers=AUTH
            ) as response:
                events = EventReader(response)
                await events.until("ready")
                assert (await events.until("truncated")).data == {"since": "junk"}
    await aw.aclose()


async def test_a_job_stream_opened_after_the_post_starts_with_the_jobs_state(
    backend_url: str,
) -> None:
    aw = Afterwork(backend_url)
    gate = anyio.Event()

    @aw.task(name="hold")
    async def hold(ctx: JobContext) -> str:
        await gate.wait()
        return "released"

    async with api(aw) as client:
        with anyio.fail_after(20):
            job = await post(client, "hold")
            # Subscribed only after the POST: the job may be queued or running already.
            async with client.stream("GET", f"/events?job={job}", headers=AUTH) as response:
                events = EventReader(response)
                await events.until("ready")
                snapshot = await events.next()
                assert snapshot is not None and snapshot.data["kind"] == "snapshot"
                assert snapshot.data["job_id"] == job and snapshot.id is None
                assert snapshot.data["status"] in ("queued", "running")
                if snapshot.data["status"] == "queued" or snapshot.data["attempts"] == 0:
                    # Queued, or claimed by a worker that has not started it yet.
                    await events.until("message", kind="started")
                else:
                    assert snapshot.data["attempts"] == 1
                gate.set()
                done = await events.until("message", kind="succeeded")
                assert done.data["job_id"] == job
            missing = await client.get(f"/events?job={new_job_id()}", headers=AUTH)
            assert missing.status_code == 404
    await aw.aclose()
