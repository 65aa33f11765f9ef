"""The clinic as two processes: the web app without a worker, and ``afterwork worker``.

The broadcast job runs in the worker process, which has no screens; the update reaches the
web process's WebSocket through ``aw.publish`` (SQLite: the events table, tailed by the web
process). This is what the README's old limitation ruled out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from examples.clinic import app as clinic_app
from examples.clinic import jobs as clinic_jobs
from examples.clinic.app import app
from examples.clinic.db import database
from examples.clinic.seed import seed
from websockets.asyncio.client import connect

from afterwork.backends import from_url

from ..servers import serve
from .test_clinic import Clinic, login, next_update, update_about

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def clinic_worker(database_url: str, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``afterwork worker examples.clinic.jobs:aw`` on ``database_url``, stopped after."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "CLINIC_DATABASE_URL": database_url,
    }
    log = (cwd / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "examples.clinic.jobs:aw"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck worker
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with clinic_worker(f"sqlite+aiosqlite:///{tmp_path}/clinic.db", tmp_path) as process:
        yield process


async def test_an_update_made_by_a_worker_process_reaches_the_web_process_screens(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    worker_process: subprocess.Popen[bytes],
) -> None:
    monkeypatch.setenv("CLINIC_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/clinic.db")
    monkeypatch.setattr(clinic_jobs.aw, "backend", from_url(f"sqlite:///{tmp_path}/clinic.db"))
    monkeypatch.setattr(clinic_app, "WEB_WORKER", False)  # jobs run in the worker only
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
        clinic = Clinic(client, admin, url.replace("http://", "ws://") + "/ws/queue")
        auth_header = {"Authorization": client.headers["Authorization"]}
        async with connect(clinic.ws_url, additional_headers=auth_header) as screen:
            first = await next_update(screen)
            ada = next(e for e in first.entries if e.patient_name == "Ada Lovelace")
            assigned = await clinic.assign(ada.patient_id, doctor_id=2)
            with anyio.fail_after(30):
                update = await update_about(screen, f"ticket {ada.ticket} assigned")
            pushed = next(e for e in update.entries if e.patient_id == ada.patient_id)
            assert pushed.status == "assigned" and pushed.room == "102"
        broadcast = await clinic.finished_job(assigned["broadcast_job"])
    assert worker_process.poll() is None, "the worker process died"
    assert broadcast["status"] == "succeeded", broadcast["error"]
    # It ran where no screen is connected: the update came through the channel.
    assert broadcast["result"] == {"screens": 0, "entries": 6}
