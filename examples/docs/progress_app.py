"""docs/fastapi.md: one job's progress for its end user, over SSE and WebSocket."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, StreamingResponse

from afterwork import Afterwork, JobContext
from afterwork.fastapi import job_event_stream, send_job_events

aw = Afterwork("memory://")  # your store: "sqlite:///./afterwork.db", "redis://…"
app = FastAPI(lifespan=aw.lifespan)
OWNERS: dict[str, str] = {}  # job id -> user: your own table
GATE = anyio.Event()  # lets the test decide when the upload moves on


@aw.task
async def process_upload(name: str, ctx: JobContext) -> str:
    for step in range(1, 5):
        await GATE.wait()
        ctx.progress(step / 4, f"step {step} of 4")
    return f"{name} processed"


def current_user(request: Request) -> str:  # your own auth
    user = request.headers.get("x-user") or request.query_params.get("user")
    if not user:
        raise HTTPException(401)
    return user


User = Annotated[str, Depends(current_user)]


def check_owner(user: str, job_id: str) -> None:
    if OWNERS.get(job_id) != user:
        raise HTTPException(404)  # not yours: as if it did not exist


@app.post("/uploads")
async def upload(name: str, user: User) -> dict[str, str]:
    job = await process_upload.enqueue(name)
    OWNERS[job.id] = user
    return {"job": job.id}


@app.get("/uploads/{job_id}/progress")
async def progress(job_id: str, request: Request, user: User) -> StreamingResponse:
    check_owner(user, job_id)
    return job_event_stream(aw, job_id, last_event_id=request.headers.get("last-event-id"))


@app.websocket("/uploads/{job_id}/ws")
async def progress_ws(websocket: WebSocket, job_id: str) -> None:
    user = websocket.query_params.get("user")  # your own auth
    if user is None or OWNERS.get(job_id) != user:
        await websocket.close(code=4404)
        return
    await send_job_events(websocket, aw, job_id)


PAGE = """<!doctype html>
<meta charset="utf-8">
<progress id="bar" max="1" value="0"></progress> <span id="text"></span>
<script>
  const job = new URLSearchParams(location.search).get("job");
  const user = new URLSearchParams(location.search).get("user");
  const source = new EventSource(`/uploads/${job}/progress?user=${user}`);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);  // the job's state, then each change
    if (event.progress !== null) document.getElementById("bar").value = event.progress;
    document.getElementById("text").textContent = event.message || event.status;
  };
  source.addEventListener("end", () => source.close());  // a final state: stop
  source.addEventListener("gone", () => source.close());  // no such job
</script>
"""


@app.get("/upload-page")
async def upload_page() -> HTMLResponse:
    return HTMLResponse(PAGE)
