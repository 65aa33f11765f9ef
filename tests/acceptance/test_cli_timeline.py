"""``afterwork jobs show`` prints a job's attempt timeline (a real SQLite store, a subprocess)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.sqlite import SQLiteBackend
from afterwork.job import JobError, new_job_id

from .test_cli import afterwork, as_json


async def _two_attempts(path: Path) -> str:
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        job_id = new_job_id()
        await backend.enqueue([NewJob(id=job_id, task="app:work", max_attempts=2)])
        for worker, outcome in (
            ("w:1:first", Outcome.retry(JobError("ConnectionError", "refused", "TB-1"), 0.0)),
            ("w:2:second", Outcome.failed(JobError("ValueError", "bad row 7", "TB-2"))),
        ):
            (claim,) = await backend.claim(worker, queues=None, limit=1, lease_ttl=60)
            await backend.begin([claim.lease])
            await backend.finish(claim.lease, outcome)
        return job_id
    finally:
        await backend.aclose()


def test_show_prints_every_attempt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    job_id = asyncio.run(_two_attempts(tmp_path / "afterwork.db"))
    shown = afterwork("jobs", "show", job_id, url=url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    (title,) = [i for i, line in enumerate(lines) if line.strip() == "attempts"]
    first, second = lines[title + 2], lines[title + 3]
    assert first.split()[0] == "1" and "w:1:first" in first and "retrying" in first
    assert "ConnectionError: refused" in first
    assert second.split()[0] == "2" and "w:2:second" in second and "failed" in second
    assert "ValueError: bad row 7" in second
    assert "TB-2" in shown.stdout  # the final error's traceback, as before
    data = as_json(afterwork("jobs", "show", job_id, "--json", url=url))
    assert [a["outcome"] for a in data["timeline"]] == ["retrying", "failed"]
    assert data["timeline"][0]["error"]["traceback"] == "TB-1"
    assert data["error"]["message"] == "bad row 7"


async def _announce(path: Path) -> None:
    from afterwork.backends.base import WorkerInfo

    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        now = backend.now()
        await backend.announce_worker(
            WorkerInfo(
                id="host-a:41:abc",
                host="host-a",
                pid=41,
                version="0.x",
                queues=("media",),
                concurrency=8,
                running=("j1", "j2"),
                services=("pump", "leader"),
                started_at=now - 120,
                last_seen=now,
                expires_at=now + 3600,
            )
        )
    finally:
        await backend.aclose()


def test_workers_lists_the_live_workers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    asyncio.run(_announce(tmp_path / "afterwork.db"))
    shown = afterwork("workers", url=url)
    assert shown.returncode == 0, shown.stderr
    (row,) = [line for line in shown.stdout.splitlines() if "host-a:41:abc" in line]
    assert row.split()[1:6] == ["host-a", "41", "media", "2/8", "pump,leader"]
    (data,) = as_json(afterwork("workers", "--json", url=url))
    assert data["running"] == ["j1", "j2"] and data["queues"] == ["media"]
    assert data["services"] == ["pump", "leader"]
