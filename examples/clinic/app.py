"""The clinic queue service: staff log in, assign patients to doctors, screens update live.

Run it with ``make demo``; the walk-through is in ``examples/clinic/README.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import update

from afterwork.fastapi import Jobs

from . import auth
from .db import DbSession, database, utcnow
from .jobs import aw, broadcast_queue_update, notify_patient
from .models import Doctor, QueueEntry, QueueStatus, open_entries
from .realtime import StatusMessage, bus, hub, queue_snapshot, relay_screen_updates
from .schemas import (
    Accepted,
    AssignDoctor,
    Assignment,
    Login,
    QueueItem,
    QueueUpdate,
    StatusChange,
    Token,
)

logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Run jobs in this web process too (the default), or only in ``afterwork worker``
#: processes: ``CLINIC_WEB_WORKER=0``.
WEB_WORKER = os.environ.get("CLINIC_WEB_WORKER", "1") != "0"
#: The pages run only their own files: no inline script, nothing from elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; frame-ancestors 'none'"
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the database, the hub and the bus, then run afterwork (worker, cron, services)."""
    await database.open()
    hub.open()
    bus.open()
    try:
        async with aw.lifespan(worker=WEB_WORKER)(app), anyio.create_task_group() as group:
            # Updates published by other processes (an ``afterwork worker``) reach our screens.
            await group.start(relay_screen_updates, aw)
            yield
            group.cancel_scope.cancel()
    finally:
        await database.aclose()


app = FastAPI(title="Clinic queue (afterwork example)", lifespan=lifespan)
api = APIRouter(prefix="/api/v1")


@api.post("/auth/login")
async def login(credentials: Login, db: DbSession, request: Request, response: Response) -> Token:
    """Exchange staff credentials for a bearer token (and the browser's cookies)."""
    address = request.client.host if request.client else ""
    try:
        opened = await auth.login(db, credentials.username, credentials.password, address)
    except auth.TooManyAttempts as exc:
        raise HTTPException(
            429, str(exc), headers={"Retry-After": str(int(exc.retry_after) + 1)}
        ) from None
    if opened is None:
        raise HTTPException(401, "wrong username or password")
    token, expires_at = opened
    auth.set_dashboard_cookie(response, token, expires_at, secure=request.url.scheme == "https")
    return Token(access_token=token, expires_at=expires_at)


@api.post("/auth/logout", status_code=204)
async def logout(db: DbSession, request: Request, bearer: auth.Bearer) -> Response:
    """End this session now: its token stops working and the browser's cookies go."""
    token = bearer.credentials if bearer else request.cookies.get(auth.SCREEN_COOKIE)
    await auth.logout(db, token)
    response = Response(status_code=204)
    auth.clear_cookies(response)
    return response


@api.post("/doctors/assign-doctor", dependencies=[Depends(auth.require_staff)])
async def assign_doctor(body: AssignDoctor, db: DbSession, jobs: Jobs) -> Assignment:
    """Send a waiting patient to a doctor; the screens and the patient hear of it."""
    if await db.get(Doctor, body.doctor_id) is None:
        raise HTTPException(404, f"no doctor {body.doctor_id}")
    # One conditional UPDATE: two clerks assigning the same patient cannot both win.
    entry_id = await db.scalar(
        update(QueueEntry)
        .where(QueueEntry.patient_id == body.patient_id, QueueEntry.status == QueueStatus.WAITING)
        .values(doctor_id=body.doctor_id, status=QueueStatus.ASSIGNED, assigned_at=utcnow())
        .returning(QueueEntry.id)
    )
    if entry_id is None:
        await db.rollback()
        raise HTTPException(409, f"patient {body.patient_id} is not waiting in the queue")
    # The patient's e-mail job is written in this transaction (the jobs live in the clinic's
    # database): it exists if and only if the assignment commits. No assignment without
    # its e-mail, no e-mail for an assignment that was rolled back.
    notification = await notify_patient.options(connection=db).enqueue(entry_id)
    await db.commit()
    entry = await db.get_one(QueueEntry, entry_id, populate_existing=True)
    # Before: background_tasks.add_task(broadcast_queue_update, ...). Same call, now a
    # tracked job with retries, enqueued once the response is sent.
    broadcast = jobs.add_task(broadcast_queue_update, f"ticket {entry.ticket} assigned")
    return Assignment(
        entry=QueueItem.of(entry), broadcast_job=broadcast.id, notification_job=notification.id
    )


@api.get("/queue/all", dependencies=[Depends(auth.require_staff)])
async def queue_all(db: DbSession) -> list[QueueItem]:
    """Every open visit: waiting ones first come, then each doctor's queue."""
    return [QueueItem.of(entry) for entry in await open_entries(db)]


@api.get("/queue/{doctor_id}", dependencies=[Depends(auth.require_staff)])
async def doctor_queue(doctor_id: int, db: DbSession) -> list[QueueItem]:
    """A doctor's consultation queue, in the order patients were assigned."""
    if await db.get(Doctor, doctor_id) is None:
        raise HTTPException(404, f"no doctor {doctor_id}")
    return [QueueItem.of(entry) for entry in await open_entries(db, doctor_id=doctor_id)]


@api.post("/queue/{entry_id}/status", status_code=202, dependencies=[Depends(auth.require_staff)])
async def report_status(entry_id: int, change: StatusChange) -> Accepted:
    """What a consultation-room device sends; the status updater service applies it."""
    try:
        bus.publish(StatusMessage(entry_id, change.status))
    except asyncio.QueueFull:
        raise HTTPException(503, "the status updater is behind; try again") from None
    return Accepted()


app.include_router(api)
# afterwork's REST API and dashboard, behind the clinic's own admin check.
app.include_router(aw.router(auth=Depends(auth.require_admin)), prefix="/afterwork")


@app.websocket("/ws/queue")
async def queue_socket(websocket: WebSocket, db: DbSession) -> None:
    """Push the queue to a screen: a snapshot now, then every update.

    Patients' names are on it: only staff (a bearer header, or the screen cookie of a
    logged-in browser) may listen, and only from a page of this site.
    """
    if not auth.same_origin(websocket) or await auth.screen_staff(db, websocket) is None:
        await db.close()
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION)  # the handshake gets 403
        return

    async def snapshot() -> QueueUpdate:
        return await queue_snapshot(db, "connected")

    await hub.connect(websocket, snapshot)
    await db.close()  # the socket may stay open for hours: don't hold a connection
    try:
        while True:
            await websocket.receive_text()  # screens only listen; this notices them leave
    except WebSocketDisconnect:
        pass
    finally:
        hub.disconnect(websocket)


@app.get("/queue-screen", include_in_schema=False, response_model=None)
async def queue_screen(db: DbSession, request: Request) -> FileResponse | RedirectResponse:
    """The waiting-room screen: a static page that listens on ``/ws/queue`` (staff only)."""
    if await auth.page_staff(db, request) is None:
        return RedirectResponse("/login?next=/queue-screen", status_code=303)
    return FileResponse(STATIC / "queue.html", headers=PAGE_HEADERS)


@app.get("/login", include_in_schema=False)
async def login_page() -> FileResponse:
    """A login form for the browser; it opens the dashboard once logged in."""
    return FileResponse(STATIC / "login.html", headers=PAGE_HEADERS)


app.mount("/static", StaticFiles(directory=STATIC), name="static")
