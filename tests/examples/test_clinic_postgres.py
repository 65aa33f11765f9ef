"""The clinic on PostgreSQL, by URL only: ``CLINIC_DATABASE_URL=postgresql+asyncpg://…``.

A fresh database per test on the session's private postgres. The clinic's tables and
afterwork's jobs share it (``store_url()`` gives ``postgresql://…``), so the outbox flow
is the same as on SQLite: the assignment route enqueues the patient's e-mail job in its own
transaction, and a worker (the app's in-process one, or an ``afterwork worker`` process)
runs it.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from examples.clinic import app as clinic_app
from examples.clinic import jobs as clinic_jobs
from examples.clinic.db import database, store_url
from examples.clinic.models import OutboxMessage
from sqlalchemy import select

from afterwork.backends.postgres import PostgresBackend

from ..waiting import eventually
from . import test_clinic as on_sqlite
from .test_clinic import Clinic, running_clinic
from .test_clinic_processes import clinic_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def clinic_url(postgres_url: str) -> AsyncIterator[str]:
    """``CLINIC_DATABASE_URL`` for a fresh database of its own."""
    name = f"clinic_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        base = postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def clinic(
    clinic_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Clinic]:
    assert store_url(clinic_url).startswith("postgresql://")
    async with running_clinic(clinic_url, monkeypatch, caplog) as running:
        assert isinstance(clinic_jobs.aw.backend, PostgresBackend)
        yield running


async def test_on_postgres_an_assignment_reaches_the_screens_and_the_outbox(
    clinic: Clinic,
) -> None:
    await on_sqlite.test_assigned_patient_reaches_the_queue_the_screens_and_the_outbox(clinic)


async def test_on_postgres_an_assignment_and_its_email_job_commit_together(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    await on_sqlite.test_an_assignment_and_its_email_job_commit_together(clinic, monkeypatch)


async def test_on_postgres_the_job_is_in_the_clinics_database(
    clinic: Clinic, clinic_url: str
) -> None:
    assigned = await clinic.assign(patient_id=3, doctor_id=1)
    notification = await clinic.finished_job(assigned["notification_job"])
    assert notification["status"] == "succeeded", notification["error"]
    conn = await asyncpg.connect(store_url(clinic_url))
    try:
        status = await conn.fetchval(
            "SELECT status FROM afterwork.jobs WHERE id = $1", assigned["notification_job"]
        )
        entry = await conn.fetchval("SELECT status::text FROM queue_entries WHERE patient_id = 3")
    finally:
        await conn.close()
    assert (status, entry.lower()) == ("succeeded", "assigned")


@pytest.fixture
def worker_process(clinic_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with clinic_worker(clinic_url, tmp_path) as process:
        yield process


async def test_on_postgres_an_afterwork_worker_process_sends_the_email(
    clinic_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    worker_process: subprocess.Popen[bytes],
) -> None:
    monkeypatch.setattr(clinic_app, "WEB_WORKER", False)  # jobs run in the worker only
    async with running_clinic(clinic_url, monkeypatch, caplog) as clinic:

        async def worker_up() -> bool:  # announced in the store: its process has started
            return any(w.pid == worker_process.pid for w in await clinic_jobs.aw.workers())

        await eventually(worker_up, timeout=60, interval=0.1)
        assigned = await clinic.assign(patient_id=1, doctor_id=2)
        notification = await clinic.finished_job(assigned["notification_job"])
        assert notification["status"] == "succeeded", notification["error"]
        async with database.session() as db:
            (mail,) = (await db.scalars(select(OutboxMessage))).all()
        assert mail.recipient == "ada@example.com"
        assert notification["result"] == {"to": "ada@example.com", "key": mail.key}
    assert worker_process.poll() is None, "the worker process died"
