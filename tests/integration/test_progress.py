"""End-user progress over real uvicorn: SSE with httpx, WebSocket with ``websockets``."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
import websockets
from examples.docs import progress_app
from examples.docs.progress_app import app, aw

from ..servers import serve
from .conftest import EventReader, Message

pytestmark = pytest.mark.anyio


async def next_data(reader: EventReader) -> Message:
    while True:
        with anyio.fail_after(10):
            message = await reader.next()
        assert message is not None, "the stream ended early"
        if message.comment is None and (message.data is not None or message.event != "message"):
            return message  # not a ping, not the ``retry:`` line


async def test_sse_progress_resumes_and_ends_at_the_final_state() -> None:
    progress_app.GATE = anyio.Event()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job_id = (await client.post("/uploads?name=a.csv", headers={"x-user": "ada"})).json()["job"]
        other = await client.get(f"/uploads/{job_id}/progress", headers={"x-user": "eve"})
        assert other.status_code == 404  # the app's own auth decides
        seen: list[dict[str, object]] = []
        last_id: str | None = None
        headers = {"x-user": "ada"}
        async with client.stream("GET", f"/uploads/{job_id}/progress", headers=headers) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            reader = EventReader(resp)
            first = await next_data(reader)
            assert first.data is not None and first.data["kind"] == "snapshot"
            progress_app.GATE.set()
            while True:  # read until the first progress report, then drop the connection
                message = await next_data(reader)
                assert message.data is not None and message.id is not None, message
                seen.append(message.data)
                last_id = message.id
                if message.data["kind"] == "progress":
                    break
        # Reconnect as EventSource does, with Last-Event-ID: the rest, none twice.
        resumed: list[dict[str, object]] = []
        headers = {"x-user": "ada", "last-event-id": last_id or ""}
        async with client.stream("GET", f"/uploads/{job_id}/progress", headers=headers) as resp:
            reader = EventReader(resp)
            while True:
                message = await next_data(reader)
                if message.event == "end":
                    break
                assert message.data is not None
                resumed.append(message.data)
            with anyio.fail_after(10):
                assert await reader.next() is None  # the server ended the stream
    everything = seen + resumed
    progress_values = [e["progress"] for e in everything if e["kind"] == "progress"]
    assert progress_values == [0.25, 0.5, 0.75, 1.0]
    assert everything[-1]["status"] == "succeeded"
    assert resumed[0]["kind"] != "snapshot"  # resumed from the history, not restarted


async def test_websocket_progress_and_the_browser_page() -> None:
    progress_app.GATE = anyio.Event()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job_id = (await client.post("/uploads?name=b.csv", headers={"x-user": "ada"})).json()["job"]
        page = (await client.get("/upload-page")).text
        assert "new EventSource(`/uploads/${job}/progress" in page
        ws_url = url.replace("http://", "ws://") + f"/uploads/{job_id}/ws?user=ada"
        events: list[dict[str, object]] = []
        with anyio.fail_after(10):
            async with websockets.connect(ws_url) as ws:
                events.append(json.loads(await ws.recv()))
                progress_app.GATE.set()
                events.extend([json.loads(raw) async for raw in ws])
                assert ws.close_code == 1000
        with anyio.fail_after(10), pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url.replace("user=ada", "user=eve"))
        assert refused.value.response.status_code == 403  # closed before accept
    assert events[0]["kind"] == "snapshot"
    assert [e["progress"] for e in events if e["kind"] == "progress"] == [0.25, 0.5, 0.75, 1.0]
    assert events[-1]["status"] == "succeeded"
    await aw.aclose()
