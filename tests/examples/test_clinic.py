"""The clinic example, end to end: the real app served by uvicorn, a fresh database per test."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from examples.clinic import auth as clinic_auth
from examples.clinic import jobs as clinic_jobs
from examples.clinic.app import app
from examples.clinic.db import database, store_url, utcnow
from examples.clinic.models import OutboxMessage, Patient, QueueEntry, Staff, StaffSession
from examples.clinic.realtime import StatusMessage, hub
from examples.clinic.schemas import QueueUpdate
from examples.clinic.seed import seed
from fastapi import HTTPException
from sqlalchemy import func, select, update
from websockets.asyncio.client import ClientConnection, connect

from afterwork.backends import from_url

from ..servers import serve
from ..waiting import eventually

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
LOOP_ERRORS = (
    "This event loop is already running",
    "Task was destroyed but it is pending",
    "was never awaited",
    "attached to a different loop",
    "blocked the event loop",
)


@dataclass
class Clinic:
    """The running app: clients logged in as reception and as admin, the WebSocket URL."""

    client: httpx.AsyncClient
    admin: httpx.AsyncClient
    ws_url: str

    def screen(self) -> connect:
        """A queue screen's socket, opened with reception's token (screens are staff-only)."""
        auth_header = {"Authorization": self.client.headers["Authorization"]}
        return connect(self.ws_url, additional_headers=auth_header)

    async def assign(self, patient_id: int, doctor_id: int) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/doctors/assign-doctor",
            json={"patient_id": patient_id, "doctor_id": doctor_id},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def finished_job(self, job_id: str) -> dict[str, Any]:
        """The job from afterwork's API, once stored (after the response) and finished."""

        async def done() -> dict[str, Any] | None:
            response = await self.admin.get(f"/afterwork/jobs/{job_id}")
            if response.status_code == 404:
                return None
            job: dict[str, Any] = response.json()
            return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

        return await eventually(done)


async def login(client: httpx.AsyncClient, username: str, password: str) -> str:
    response = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def next_update(socket: ClientConnection) -> QueueUpdate:
    return QueueUpdate.model_validate_json(await socket.recv())


async def update_about(socket: ClientConnection, reason: str) -> QueueUpdate:
    """The next update pushed because of ``reason`` (skipping earlier ones)."""
    while (update := await next_update(socket)).reason != reason:
        pass
    return update


def assert_no_loop_errors(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert not any(error in text for error in LOOP_ERRORS), text
        # uvicorn logs an app's unhandled exceptions ("Exception in ASGI application") here.
        assert not (record.name.startswith("uvicorn") and record.levelno >= logging.ERROR), text


@asynccontextmanager
async def running_clinic(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Clinic]:
    """The clinic on ``database_url`` (seeded), served, with reception and admin logged in."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(clinic_auth, "throttle", clinic_auth.Throttle())  # fresh counts
    monkeypatch.setenv("CLINIC_DATABASE_URL", database_url)
    # A fresh store per test, in the clinic's own database (as ``store_url()`` makes it):
    # the assignment route enqueues in its transaction. The module-level ``aw`` is closed
    # between tests.
    monkeypatch.setattr(clinic_jobs.aw, "backend", from_url(store_url(database_url)))
    await database.open()
    async with database.session() as db:
        await seed(db)
    await database.aclose()
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        httpx.AsyncClient(base_url=url, timeout=10) as admin,
    ):
        client.headers["Authorization"] = (
            f"Bearer {await login(client, 'reception', 'reception-demo')}"
        )
        admin.headers["Authorization"] = f"Bearer {await login(admin, 'admin', 'admin-demo')}"
        # uvicorn's loggers do not propagate to the root logger, where caplog listens.
        uvicorn_log = logging.getLogger("uvicorn")
        uvicorn_log.addHandler(caplog.handler)
        try:
            yield Clinic(client, admin, url.replace("http://", "ws://") + "/ws/queue")
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    assert_no_loop_errors(caplog)


@pytest.fixture
async def clinic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Clinic]:
    url = f"sqlite+aiosqlite:///{tmp_path}/clinic.db"
    async with running_clinic(url, monkeypatch, caplog) as running:
        yield running


async def test_assigned_patient_reaches_the_queue_the_screens_and_the_outbox(
    clinic: Clinic,
) -> None:
    async with clinic.screen() as screen:
        first = await next_update(screen)
        ada = next(e for e in first.entries if e.patient_name == "Ada Lovelace")
        assert ada.status == "waiting" and ada.doctor_id is None

        assigned = await clinic.assign(ada.patient_id, doctor_id=2)
        assert assigned["entry"]["status"] == "assigned"
        assert assigned["entry"]["doctor_name"] == "Dr. Ben Okafor"

        everyone = (await clinic.client.get("/api/v1/queue/all")).json()
        assert {"patient_id": ada.patient_id, "doctor_id": 2, "status": "assigned"}.items() <= next(
            e for e in everyone if e["patient_id"] == ada.patient_id
        ).items()
        doctor_queue = (await clinic.client.get("/api/v1/queue/2")).json()
        assert [e["patient_id"] for e in doctor_queue] == [ada.patient_id]
        assert (await clinic.client.get("/api/v1/queue/3")).json() == []

        update_ = await update_about(screen, f"ticket {ada.ticket} assigned")
        pushed = next(e for e in update_.entries if e.patient_id == ada.patient_id)
        assert pushed.status == "assigned" and pushed.room == "102"

    broadcast = await clinic.finished_job(assigned["broadcast_job"])
    assert broadcast["status"] == "succeeded", broadcast["error"]
    assert broadcast["task"] == "examples.clinic.jobs:broadcast_queue_update"
    assert broadcast["result"] == {"screens": 1, "entries": 6}

    notification = await clinic.finished_job(assigned["notification_job"])
    assert notification["status"] == "succeeded", notification["error"]
    async with database.session() as db:
        (mail,) = (await db.scalars(select(OutboxMessage))).all()
    assert mail.recipient == "ada@example.com"
    assert mail.subject == f"Your ticket {ada.ticket}: please go to room 102"
    assert notification["result"] == {"to": "ada@example.com", "key": mail.key}


async def test_a_failing_broadcast_is_retried_and_recorded(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_broadcast = hub.broadcast
    calls = 0

    async def first_attempt_fails(update: QueueUpdate) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("screen gateway unavailable")
        return await real_broadcast(update)

    monkeypatch.setattr(hub, "broadcast", first_attempt_fails)
    async with clinic.screen() as screen:
        await next_update(screen)
        assigned = await clinic.assign(patient_id=2, doctor_id=1)
        # delivered by the second attempt
        update_ = await update_about(screen, f"ticket {assigned['entry']['ticket']} assigned")
        assert any(e.patient_id == 2 and e.status == "assigned" for e in update_.entries)

    job = await clinic.finished_job(assigned["broadcast_job"])
    assert job["status"] == "succeeded"
    assert job["attempts"] == 2 and calls == 2
    # job.error is the final attempt's (it succeeded); the failed one is kept in the timeline
    assert job["error"] is None
    first, second = job["timeline"]
    assert (first["outcome"], second["outcome"]) == ("retrying", "succeeded")
    assert first["error"]["type"].endswith("ConnectionError")  # the failed attempt, kept
    assert "screen gateway unavailable" in first["error"]["message"]
    assert "screen gateway unavailable" in caplog.text


async def test_assignments_are_checked(clinic: Clinic) -> None:
    await clinic.assign(patient_id=3, doctor_id=1)
    again = await clinic.client.post(
        "/api/v1/doctors/assign-doctor", json={"patient_id": 3, "doctor_id": 2}
    )
    assert again.status_code == 409
    nobody = await clinic.client.post(
        "/api/v1/doctors/assign-doctor", json={"patient_id": 4, "doctor_id": 99}
    )
    assert nobody.status_code == 404
    assert (await clinic.client.get("/api/v1/queue/99")).status_code == 404


async def test_an_assignment_and_its_email_job_commit_together(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The e-mail job is enqueued inside the assignment's transaction: when the commit
    fails, neither the assignment nor the job exists; when it succeeds, both do."""
    from sqlalchemy.ext.asyncio import AsyncSession

    real_commit = AsyncSession.commit

    async def failing_commit(self: AsyncSession) -> None:
        raise HTTPException(503, "the database went away")

    monkeypatch.setattr(AsyncSession, "commit", failing_commit)
    failed = await clinic.client.post(
        "/api/v1/doctors/assign-doctor", json={"patient_id": 5, "doctor_id": 1}
    )
    monkeypatch.setattr(AsyncSession, "commit", real_commit)
    assert failed.status_code == 503
    notify = "examples.clinic.jobs:notify_patient"
    jobs = (await clinic.admin.get("/afterwork/jobs", params={"task": notify})).json()
    assert jobs["jobs"] == []
    waiting = (await clinic.client.get("/api/v1/queue/all")).json()
    assert next(e for e in waiting if e["patient_id"] == 5)["status"] == "waiting"

    assigned = await clinic.assign(patient_id=5, doctor_id=1)
    notification = await clinic.finished_job(assigned["notification_job"])
    assert notification["status"] == "succeeded", notification["error"]


async def test_login_tokens_are_stored_hashed_and_expire(clinic: Clinic) -> None:
    anonymous = httpx.AsyncClient(base_url=str(clinic.client.base_url), timeout=10)
    async with anonymous:
        assert (await anonymous.get("/api/v1/queue/all")).status_code == 401
        wrong = await anonymous.post(
            "/api/v1/auth/login", json={"username": "admin", "password": "nope"}
        )
        assert wrong.status_code == 401
        token = await login(anonymous, "admin", "admin-demo")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await anonymous.get("/api/v1/queue/all", headers=headers)).status_code == 200

        async with database.session() as db:
            hashes = set((await db.scalars(select(StaffSession.token_hash))).all())
            assert token not in hashes
            assert hashlib.sha256(token.encode()).hexdigest() in hashes
            await db.execute(update(StaffSession).values(expires_at=utcnow()))
            await db.commit()
        assert (await anonymous.get("/api/v1/queue/all", headers=headers)).status_code == 401


async def test_the_queue_screen_page_is_served(clinic: Clinic) -> None:
    page = await clinic.client.get("/queue-screen")
    assert page.status_code == 200 and '<script src="/static/queue.js"' in page.text
    script = await clinic.client.get("/static/queue.js")
    assert script.status_code == 200 and "/ws/queue" in script.text


def run_demo_seed(demo_dir: Path) -> str:
    env = {**os.environ, "DEMO_DIR": str(demo_dir), "DEMO_PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "seed"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_demo_seeding_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_demo_seed(tmp_path)
    second = run_demo_seed(tmp_path)
    assert "6 patients checked in" in first
    assert "0 staff, 0 doctors, 0 patients added; 0 patients checked in" in second

    monkeypatch.setenv("CLINIC_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/clinic.db")
    await database.open()
    try:
        async with database.session() as db:
            counts = {
                table.__name__: await db.scalar(select(func.count()).select_from(table))
                for table in (Staff, Patient, QueueEntry)
            }
    finally:
        await database.aclose()
    assert counts == {"Staff": 2, "Patient": 6, "QueueEntry": 6}


async def test_the_afterwork_dashboard_is_behind_the_clinic_admin_login(clinic: Clinic) -> None:
    assert (await clinic.client.get("/afterwork/jobs")).status_code == 403  # reception
    async with httpx.AsyncClient(base_url=str(clinic.client.base_url), timeout=10) as browser:
        assert (await browser.get("/afterwork/")).status_code == 401
        await login(browser, "admin", "admin-demo")  # sets the dashboard's cookie
        assert "clinic_admin" in browser.cookies
        dashboard = await browser.get("/afterwork/")
        assert dashboard.status_code == 200 and "text/html" in dashboard.headers["content-type"]
        assert (await browser.get("/api/v1/queue/all")).status_code == 401  # bearer only
    assert (await clinic.admin.get("/afterwork/jobs")).status_code == 200


async def test_room_devices_reach_the_supervised_status_updater_which_survives_a_crash(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry = (await clinic.assign(patient_id=4, doctor_id=3))["entry"]
    real_apply = clinic_jobs.apply_status
    crashes = 0

    async def crash_once(message: StatusMessage) -> bool:
        nonlocal crashes
        if not crashes:
            crashes += 1
            raise RuntimeError("device gateway hiccup")
        return await real_apply(message)

    monkeypatch.setattr(clinic_jobs, "apply_status", crash_once)

    async def report(status: str) -> None:
        response = await clinic.client.post(
            f"/api/v1/queue/{entry['entry_id']}/status", json={"status": status}
        )
        assert response.status_code == 202, response.text

    async def updater() -> dict[str, Any] | None:
        (service,) = (await clinic.admin.get("/afterwork/services")).json()
        return service if service["crashes"] == 1 and service["state"] == "running" else None

    async with clinic.screen() as screen:
        await report("in_consultation")  # crashes the consumer: afterwork restarts it
        service = await eventually(updater)
        assert service["name"] == "examples.clinic.jobs:status_updater"
        assert service["restarts"] == 1
        assert "device gateway hiccup" in service["last_error"]["message"]

        await report("in_consultation")
        update_ = await update_about(screen, f"ticket {entry['ticket']} in_consultation")
        seen = next(e for e in update_.entries if e.entry_id == entry["entry_id"])
        assert seen.status == "in_consultation"
    doctor_queue = (await clinic.client.get("/api/v1/queue/3")).json()
    assert [e["status"] for e in doctor_queue] == ["in_consultation"]
    assert "device gateway hiccup" in caplog.text  # the crash was logged, not swallowed


async def test_expired_sessions_are_purged_by_the_nightly_schedule_or_run_now(
    clinic: Clinic,
) -> None:
    schedules = (await clinic.admin.get("/afterwork/schedules")).json()
    assert [s["name"] for s in schedules] == ["purge-expired-sessions"]

    async with database.session() as db:
        await db.execute(
            update(StaffSession)
            .where(StaffSession.id == 1)  # reception's, from the fixture's login
            .values(expires_at=utcnow())
        )
        await db.commit()
    ran = await clinic.admin.post(
        "/afterwork/schedules/purge-expired-sessions/trigger",
        headers={"X-Afterwork-CSRF": "1"},
    )
    assert ran.status_code == 200, ran.text
    job = await clinic.finished_job(ran.json()["job"]["id"])
    assert job["status"] == "succeeded" and job["result"] == 1
    async with database.session() as db:
        assert await db.scalar(select(func.count()).select_from(StaffSession)) == 1  # admin's
    assert (await clinic.client.get("/api/v1/queue/all")).status_code == 401


async def test_in_a_browser_the_queue_screen_updates_live_and_admins_reach_the_dashboard(
    clinic: Clinic, browser: Browser
) -> None:
    base = str(clinic.client.base_url).rstrip("/")
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(r.url) if r.status >= 400 else None)
    with anyio.fail_after(60):
        # The screen shows patients' names: it sends a browser to log in first, then back.
        await page.goto(f"{base}/queue-screen")
        await page.wait_for_url(f"{base}/login?next=/queue-screen")
        await page.fill("input[name=username]", "reception")
        await page.fill("input[name=password]", "reception-demo")
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/queue-screen")
        await page.wait_for_selector("#connection.online")
        assert await page.locator("#waiting li").count() == 6

        assigned = await clinic.assign(patient_id=5, doctor_id=1)
        row = page.locator(f'#assigned tr[data-entry="{assigned["entry"]["entry_id"]}"]')
        await row.wait_for()
        assert "Barbara Liskov" in await row.inner_text()
        assert "101" in await row.inner_text()
        assert await page.locator("#waiting li").count() == 5

        await page.goto(f"{base}/login")
        await page.fill("input[name=username]", "admin")
        await page.fill("input[name=password]", "admin-demo")
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/afterwork/")
        job = assigned["broadcast_job"]
        await page.wait_for_selector(f'tr[data-job="{job}"] td.status-succeeded')
    await context.close()
    assert errors == []


async def test_the_queue_socket_is_for_staff_and_this_site_only(clinic: Clinic) -> None:
    from websockets.exceptions import InvalidStatus

    token = clinic.client.headers["Authorization"].removeprefix("Bearer ")
    host = clinic.ws_url.removeprefix("ws://").partition("/")[0]
    refused: list[dict[str, str]] = [
        {},  # anonymous
        {"Authorization": "Bearer not-a-token"},
        {"Cookie": "clinic_screen=not-a-token"},
        # a logged-in browser, but the page opening the socket is on another site
        {"Cookie": f"clinic_screen={token}", "Origin": "https://evil.example"},
        {"Cookie": f"clinic_screen={token}", "Origin": f"https://{host}"},
    ]
    for headers in refused:
        with pytest.raises(InvalidStatus) as info:
            async with connect(clinic.ws_url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 403, headers
    # This site's page with the browser's cookie, and a device with a bearer token, get in.
    own = {"Cookie": f"clinic_screen={token}", "Origin": f"http://{host}"}
    async with connect(clinic.ws_url, additional_headers=own) as screen:
        assert (await next_update(screen)).reason == "connected"
    async with clinic.screen() as screen:
        assert (await next_update(screen)).reason == "connected"
    # The page itself sends an anonymous browser to the login form.
    async with httpx.AsyncClient(base_url=str(clinic.client.base_url)) as anonymous:
        page = await anonymous.get("/queue-screen")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/queue-screen"


async def test_login_takes_as_long_for_an_unknown_user(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real_verify = clinic_auth.verify_password

    def spy(password: str, stored: str) -> bool:
        checked.append(password)
        return real_verify(password, stored)

    monkeypatch.setattr(clinic_auth, "verify_password", spy)

    async def seconds(username: str) -> float:
        start = anyio.current_time()
        response = await clinic.client.post(
            "/api/v1/auth/login", json={"username": username, "password": "wrong-password"}
        )
        assert response.status_code == 401
        return anyio.current_time() - start

    unknown = sorted([await seconds(f"nobody{n}") for n in range(3)])[1]
    known = sorted([await seconds(name) for name in ("admin", "reception", "dr.okafor")])[1]
    # The password is checked (a scrypt) whether or not the user exists...
    assert checked == ["wrong-password"] * 6
    # ...so the medians are of one size (it was 3 ms against 139 ms).
    assert unknown > known * 0.3, (unknown, known)


async def test_repeated_wrong_passwords_are_throttled(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(clinic_auth.throttle, "clock", lambda: now[0])
    base = str(clinic.client.base_url)

    async def attempt(client: httpx.AsyncClient, password: str) -> httpx.Response:
        return await client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": password}
        )

    async with httpx.AsyncClient(base_url=base, timeout=10) as guesser:
        for n in range(clinic_auth.throttle.limit):
            assert (await attempt(guesser, f"guess{n}")).status_code == 401
        locked = await attempt(guesser, "admin-demo")  # even the right password, for now
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert "access_token" not in locked.text
        # Another user is not locked out by admin's guesser.
        assert (
            await clinic.client.post(
                "/api/v1/auth/login", json={"username": "reception", "password": "reception-demo"}
            )
        ).status_code == 200
        now[0] += clinic_auth.throttle.window + 1
        assert (await attempt(guesser, "admin-demo")).status_code == 200
        # A success clears the count.
        for n in range(clinic_auth.throttle.limit - 1):
            assert (await attempt(guesser, f"again{n}")).status_code == 401
        assert (await attempt(guesser, "admin-demo")).status_code == 200


async def test_logout_ends_the_session_and_sessions_are_short(clinic: Clinic) -> None:
    async with httpx.AsyncClient(base_url=str(clinic.client.base_url), timeout=10) as browser:
        response = await browser.post(
            "/api/v1/auth/login", json={"username": "admin", "password": "admin-demo"}
        )
        body = response.json()
        expires_at = datetime.fromisoformat(body["expires_at"]).replace(tzinfo=None)
        assert expires_at - utcnow() <= timedelta(hours=1)
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await browser.get("/api/v1/queue/all", headers=headers)).status_code == 200
        assert (await browser.get("/afterwork/")).status_code == 200  # the cookie
        out = await browser.post("/api/v1/auth/logout", headers=headers)
        assert out.status_code == 204
        assert "clinic_admin" not in browser.cookies and "clinic_screen" not in browser.cookies
        assert (await browser.get("/api/v1/queue/all", headers=headers)).status_code == 401
        cookie = {"Cookie": f"clinic_admin={body['access_token']}"}
        assert (await browser.get("/afterwork/", headers=cookie)).status_code == 401


async def test_cookies_are_secure_over_https(clinic: Clinic) -> None:
    # The same app, reached as https (what uvicorn --proxy-headers reports behind TLS).
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://clinic.example") as tls:
        response = await tls.post(
            "/api/v1/auth/login", json={"username": "admin", "password": "admin-demo"}
        )
        assert response.status_code == 200
        cookies = response.headers.get_list("set-cookie")
        assert len(cookies) == 2
        for header in cookies:
            assert "Secure" in header and "HttpOnly" in header and "SameSite=strict" in header
    plain = await clinic.client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": "admin-demo"}
    )
    assert all("Secure" not in h for h in plain.headers.get_list("set-cookie"))
