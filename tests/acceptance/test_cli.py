"""The ``afterwork`` command, driven as a subprocess against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.sqlite import SQLiteBackend
from afterwork.job import JobError, new_job_id

ROOT = Path(__file__).resolve().parents[2]


def afterwork(
    *args: str, url: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    # src first: the checkout under test, whatever afterwork the environment installed.
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    env.pop("AFTERWORK_URL", None)
    if url is not None:
        env["AFTERWORK_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "afterwork", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Store:
    """A store holding one job in each interesting state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.ids: dict[str, str] = {}

    async def fill(self) -> None:
        backend = SQLiteBackend(str(self.path))
        await backend.open()
        try:
            names = ["queued", "running", "failed", "succeeded", "media", "markup"]
            jobs = {name: NewJob(id=new_job_id(), task="app:work", args=[name]) for name in names}
            jobs["media"] = NewJob(id=new_job_id(), task="app:encode", queue="media")
            jobs["markup"] = NewJob(id=new_job_id(), task="[red]x[/red]\u202e", queue="media")
            await backend.enqueue([jobs[n] for n in ("running", "failed", "succeeded")])
            claims = await backend.claim("w:1:abc", queues=None, limit=3, lease_ttl=300)
            by_id = {c.job.id: c for c in claims}
            await backend.finish(
                by_id[jobs["failed"].id].lease,
                Outcome.failed(JobError("ValueError", "bad <b>input</b>", "Traceback: here")),
            )
            await backend.finish(by_id[jobs["succeeded"].id].lease, Outcome.succeeded({"ok": 1}))
            await backend.enqueue([jobs[n] for n in ("queued", "media", "markup")])
            self.ids = {name: job.id for name, job in jobs.items()}
        finally:
            await backend.aclose()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "afterwork.db")
    asyncio.run(s.fill())
    return s


def test_list_as_json_with_filters(store: Store) -> None:
    everything = as_json(afterwork("jobs", "list", "--json", "--url", store.url))
    assert {j["id"] for j in everything} == set(store.ids.values())
    assert [j["id"] for j in everything] == sorted(store.ids.values(), reverse=True)
    failed = as_json(afterwork("jobs", "list", "--json", "--status", "failed", url=store.url))
    assert [j["id"] for j in failed] == [store.ids["failed"]]
    assert failed[0]["error"]["message"] == "bad <b>input</b>"
    media = as_json(
        afterwork("jobs", "list", "--json", "-q", "media", "--limit", "1", url=store.url)
    )
    assert len(media) == 1 and media[0]["queue"] == "media"
    bad = afterwork("jobs", "list", "--status", "sleeping", url=store.url)
    assert bad.returncode == 2 and "sleeping" in bad.stderr


def test_list_table_shows_fields_literally(store: Store) -> None:
    result = afterwork("jobs", "list", url=store.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert store.ids["queued"] in out and "app:work" in out and "succeeded" in out
    assert "[red]x[/red]" in out  # not interpreted as rich markup
    assert "\u202e" not in out and "\\u202e" in out  # bidi override shown escaped


def test_show_a_job(store: Store) -> None:
    job = as_json(afterwork("jobs", "show", store.ids["succeeded"], "--json", url=store.url))
    assert job["status"] == "succeeded" and job["result"] == {"ok": 1}
    table = afterwork("jobs", "show", store.ids["failed"], url=store.url)
    assert table.returncode == 0
    assert "ValueError: bad <b>input</b>" in table.stdout and "Traceback: here" in table.stdout
    missing = afterwork("jobs", "show", "nope", url=store.url)
    assert missing.returncode == 1 and "no job with id 'nope'" in missing.stderr


def test_show_says_why_a_waiting_job_waits(store: Store) -> None:
    queue = as_json(afterwork("jobs", "show", store.ids["queued"], "--json", url=store.url))[
        "queue"
    ]
    assert afterwork("queues", "pause", queue, url=store.url).returncode == 0
    try:
        table = afterwork("jobs", "show", store.ids["queued"], url=store.url)
        assert table.returncode == 0, table.stderr
        assert "waiting" in table.stdout and "is paused" in table.stdout
        job = as_json(afterwork("jobs", "show", store.ids["queued"], "--json", url=store.url))
        assert job["waiting_reason"].startswith("paused queue:")
    finally:
        afterwork("queues", "resume", queue, url=store.url)


def test_cancel_waiting_running_and_finished_jobs(store: Store) -> None:
    queued = afterwork("jobs", "cancel", store.ids["queued"], url=store.url)
    assert queued.returncode == 0 and "cancelled" in queued.stdout
    running = as_json(afterwork("jobs", "cancel", store.ids["running"], "--json", url=store.url))
    assert running["status"] == "running" and running["cancel_requested"] is True
    again = afterwork("jobs", "cancel", store.ids["succeeded"], "--json", url=store.url)
    assert again.returncode == 1 and "nothing to do" in again.stderr
    assert json.loads(again.stdout)["status"] == "succeeded"  # scripts still get the job
    missing = afterwork("jobs", "cancel", "nope", url=store.url)
    assert missing.returncode == 1


def test_retry_failed_but_not_queued(store: Store) -> None:
    retried = as_json(afterwork("jobs", "retry", store.ids["failed"], "--json", url=store.url))
    assert retried["status"] == "queued" and retried["attempts"] == 0
    refused = afterwork("jobs", "retry", store.ids["queued"], url=store.url)
    assert refused.returncode == 1 and "is queued" in refused.stderr


def test_queues_and_purge(store: Store) -> None:
    stats = {s["queue"]: s for s in as_json(afterwork("queues", "--json", url=store.url))}
    assert stats["default"]["counts"] == {
        "scheduled": 0,
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert stats["media"]["counts"]["queued"] == 2
    assert stats["media"]["oldest_waiting_at"] is not None
    table = afterwork("queues", url=store.url)
    assert table.returncode == 0 and "media" in table.stdout and "default" in table.stdout
    assert as_json(afterwork("purge", "--json", url=store.url)) == {"purged": 0}
    purged = afterwork("purge", "--older-than", "0", "--yes", url=store.url)
    assert purged.returncode == 0 and "purged 2 finished job(s)" in purged.stdout
    remaining = as_json(afterwork("jobs", "list", "--json", url=store.url))
    assert {j["status"] for j in remaining} == {"queued", "running"}


def test_app_option_uses_the_apps_store(store: Store) -> None:
    result = afterwork(
        "jobs", "list", "--json", "--app", "tests.integration.sqlite_worker_app:aw", url=store.url
    )
    assert len(as_json(result)) == len(store.ids)
    both = afterwork("jobs", "list", "--app", "x:aw", "--url", store.url)
    assert both.returncode == 2 and "not both" in both.stderr
    wrong = afterwork("jobs", "list", "--app", "no_such_module_here:aw")
    assert wrong.returncode == 2 and "cannot import" in wrong.stderr


def test_clear_errors_and_exit_codes(tmp_path: Path, store: Store) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = afterwork("jobs", "list", cwd=empty)
    assert nothing.returncode == 2 and "no afterwork store at" in nothing.stderr
    assert not (empty / "afterwork.db").exists()  # looking created nothing
    scheme = afterwork("queues", url="ftp://example.com/jobs")
    assert scheme.returncode == 2 and "unknown backend URL scheme" in scheme.stderr
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE afterwork_meta SET value = '42' WHERE name = 'schema_version'")
    newer = afterwork("queues", url=store.url)
    assert newer.returncode == 3 and "newer afterwork" in newer.stderr
    assert "Traceback" not in newer.stderr


def test_queues_pause_and_resume(store: Store) -> None:
    paused = afterwork("queues", "pause", "media", url=store.url)
    assert paused.returncode == 0 and "queue media: paused" in paused.stdout
    stats = {s["queue"]: s for s in as_json(afterwork("queues", "--json", url=store.url))}
    assert (stats["media"]["paused"], stats["default"]["paused"]) == (True, False)
    table = afterwork("queues", url=store.url)
    assert "media (paused)" in table.stdout and "paused: media" in table.stdout
    resumed = afterwork("queues", "resume", "media", url=store.url)
    assert resumed.returncode == 0 and "queue media: resumed" in resumed.stdout
    stats = {s["queue"]: s for s in as_json(afterwork("queues", "--json", url=store.url))}
    assert stats["media"]["paused"] is False
    bad = afterwork("queues", "pause", "", url=store.url)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_bulk_retry_and_cancel_count_first_and_ask(store: Store) -> None:
    failed = store.ids["failed"]
    dry = afterwork(
        "jobs", "retry", "--status", "failed", "--task", "app:work", "--since", "1h",
        "--dry-run", url=store.url,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert failed in dry.stdout and "1 job(s) would be retried" in dry.stdout
    assert as_json(afterwork("jobs", "show", failed, "--json", url=store.url))["status"] == "failed"
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "AFTERWORK_URL": store.url}
    declined = subprocess.run(
        [sys.executable, "-m", "afterwork", "jobs", "retry", "--status", "failed"],
        cwd=ROOT, env=env, input="n\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert declined.returncode == 1 and "retry 1 job(s)?" in declined.stdout
    assert as_json(afterwork("jobs", "show", failed, "--json", url=store.url))["status"] == "failed"
    done = afterwork(
        "jobs", "retry", "--status", "failed", "--error-type", "ValueError", "--yes", url=store.url
    )
    assert done.returncode == 0 and "retried 1 of 1 job(s)" in done.stdout
    assert as_json(afterwork("jobs", "show", failed, "--json", url=store.url))["status"] == "queued"
    cancelled = as_json(
        afterwork("jobs", "cancel", "--queue", "media", "--yes", "--json", url=store.url)
    )
    assert cancelled == {"matched": 2, "cancelled": 2}
    neither = afterwork("jobs", "retry", url=store.url)
    assert neither.returncode == 2 and "give a job id, or filters" in neither.stderr
    bad = afterwork("jobs", "retry", "--since", "soon", url=store.url)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
