"""Real worker processes on one SQLite file: SIGKILL, SIGTERM, a second signal, concurrent
claims and hand-corrupted rows (RELIABILITY.md T-KILL9, T-SIGTERM, T-SIG2, T-8DEQ,
T-MALFORMED, reduced to fit CI on a 2-core box).

Ground truth is the ledger each job appends to with ``os.write`` on an ``O_APPEND`` fd
(``tests/integration/sqlite_worker_app.py``); the store is compared against it. Every wait
polls a condition against a deadline; nothing sleeps to let time pass.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from afterwork.job import new_job_id

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.sqlite_worker_app:aw"
LEASE_TTL = 2.0
REAPER = 0.5


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Harness:
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "afterwork.db"

    @property
    def ledger_dir(self) -> Path:
        return self.tmp / "ledger"

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def create_store(self) -> None:
        """Let afterwork create the schema, as a worker would on first start."""
        import asyncio

        from afterwork.backends.sqlite import SQLiteBackend

        async def create() -> None:
            store = SQLiteBackend(str(self.db))
            await store.open()
            await store.aclose()

        asyncio.run(create())

    def enqueue(self, durations: list[float], **fields: Any) -> list[str]:
        import asyncio

        from afterwork.backends.base import NewJob
        from afterwork.backends.sqlite import SQLiteBackend

        jobs = [
            NewJob(id=new_job_id(), task="work", args=[n, seconds], **fields)
            for n, seconds in enumerate(durations)
        ]

        async def enqueue() -> None:
            store = SQLiteBackend(str(self.db))
            await store.open()
            try:
                await store.enqueue(jobs)
            finally:
                await store.aclose()

        asyncio.run(enqueue())
        return [job.id for job in jobs]

    def start_worker(self, *args: str, grace: float = 10.0) -> subprocess.Popen[bytes]:
        index = len(self.procs)
        env = {
            **os.environ,
            "AFTERWORK_URL": f"sqlite:///{self.db}",
            "AFTERWORK_TEST_LEDGER": str(self.ledger_dir),
            "AFTERWORK_TEST_GRACE": str(grace),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }
        with (
            open(self.tmp / f"worker{index}.out", "wb") as out,
            open(self.tmp / f"worker{index}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "afterwork", "worker", APP, *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp / f"worker{self.procs.index(proc)}.err").read_text(errors="replace")

    def ledger(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in self.ledger_dir.glob("*.jsonl"):
            lines = path.read_text().splitlines()
            records.extend(json.loads(line) for line in lines if line.strip())
        return records

    def statuses(self) -> Counter[str]:
        with self.connect() as conn:
            return Counter(
                dict(conn.execute("SELECT status, count(*) FROM afterwork_jobs GROUP BY status"))
            )

    def rows(self, sql: str, *params: Any) -> list[Any]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    h.ledger_dir.mkdir()
    h.create_store()
    yield h
    h.stop_all()


def placeholders(values: Any) -> str:
    return ", ".join("?" * len(values))


def accepted_completions(h: Harness) -> Counter[str]:
    rows = h.rows("SELECT job_id FROM afterwork_events WHERE kind = 'succeeded'")
    return Counter(job_id for (job_id,) in rows)


def assert_clean_logs(h: Harness) -> None:
    for proc in h.procs:
        text = h.log(proc)
        assert "database is locked" not in text
        assert "Traceback" not in text, text[-3000:]


def test_sigkill_mid_run_loses_nothing_and_reruns_only_jobs_in_flight(harness: Harness) -> None:
    """T-KILL9 (reduced): 2 workers × 4, 300 jobs, one SIGKILL mid-run."""
    h = harness
    rng = random.Random(20240601)
    ids = h.enqueue([rng.uniform(0.02, 0.15) for _ in range(300)])
    victim = h.start_worker("--concurrency", "4")
    survivor = h.start_worker("--concurrency", "4")

    def ends() -> int:
        return sum(1 for r in h.ledger() if r["ev"] == "end")

    wait_for(lambda: ends() >= 60, 60, "a fifth of the jobs to finish")
    wait_for(
        lambda: (
            h.rows(
                "SELECT count(*) FROM afterwork_jobs WHERE status = 'running' AND worker LIKE ?",
                f"%:{victim.pid}:%",
            )[0][0]
            > 0
        ),
        30,
        "the victim to hold a job",
    )
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    victim.wait(10)
    assert victim.returncode == -signal.SIGKILL
    in_flight = {
        job_id
        for (job_id,) in h.rows(
            "SELECT id FROM afterwork_jobs WHERE status = 'running' AND worker LIKE ?",
            f"%:{victim.pid}:%",
        )
    }
    assert in_flight, "the kill landed between jobs; nothing to recover"

    wait_for(lambda: h.statuses().get("succeeded", 0) == 300, 90, "every job to succeed")
    records = h.ledger()
    starts = Counter(r["job"] for r in records if r["ev"] == "start")
    assert set(starts) == set(ids)  # lost = 0
    rerun = {job_id for job_id, count in starts.items() if count > 1}
    assert rerun <= in_flight  # only jobs in flight at the kill ran twice
    started_by_victim = {r["job"] for r in records if r["ev"] == "start" and r["pid"] == victim.pid}
    ended_by_victim = {r["job"] for r in records if r["ev"] == "end" and r["pid"] == victim.pid}
    for job_id in in_flight:
        if job_id in started_by_victim:
            # Running at the kill: restarted (or it had already ended, unrecorded).
            assert job_id in rerun | ended_by_victim, job_id
        else:
            # Prefetched by the victim but never started: run exactly once, elsewhere.
            assert starts[job_id] == 1, job_id
    completions = accepted_completions(h)
    assert set(completions) == set(ids)
    assert max(completions.values()) == 1  # dup_completions = 0
    # Recovery: the lease expires ≤ lease_ttl after the kill, the next reaper pass takes it
    # back (recovered jobs then queue behind older ones, as on every backend).
    bound = LEASE_TTL + 2 * REAPER + 2.0
    marks = placeholders(in_flight)
    recovered_at = h.rows(
        f"SELECT job_id, at FROM afterwork_events WHERE kind = 'recovered' AND job_id IN ({marks})",
        *in_flight,
    )
    assert {job_id for job_id, _ in recovered_at} == in_flight
    for job_id, at in recovered_at:
        assert at - killed_at <= bound, (job_id, at - killed_at)
    # Only attempts that had started are charged a recovery; prefetched ones go back free.
    charged = {job_id for (job_id,) in h.rows("SELECT id FROM afterwork_jobs WHERE recoveries > 0")}
    assert started_by_victim & in_flight <= charged <= in_flight
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(30) == 0
    assert_clean_logs(h)


def test_sigterm_drains_then_exits_zero(harness: Harness) -> None:
    """T-SIGTERM (reduced): nothing starts after the signal; running jobs finish."""
    h = harness
    ids = h.enqueue([0.6] * 30)
    worker = h.start_worker("--concurrency", "3", grace=10)
    wait_for(lambda: sum(r["ev"] == "start" for r in h.ledger()) >= 3, 30, "jobs to start")
    worker.send_signal(signal.SIGTERM)
    signalled = time.time()
    assert worker.wait(30) == 0
    exited = time.time()
    records = h.ledger()
    started = {r["job"] for r in records if r["ev"] == "start"}
    ended = {r["job"] for r in records if r["ev"] == "end"}
    assert started and started == ended  # the running ones finished within the grace
    late = [r for r in records if r["ev"] == "start" and r["t"] / 1e9 > signalled + 0.1]
    assert late == []
    assert exited - signalled <= 10 + 2
    statuses = dict(h.rows("SELECT id, status FROM afterwork_jobs"))
    assert {statuses[j] for j in started} == {"succeeded"}
    assert {statuses[j] for j in set(ids) - started} == {"queued"}  # untouched
    assert h.rows("SELECT count(*) FROM afterwork_jobs WHERE token IS NOT NULL") == [(0,)]
    assert "stopping gracefully" in h.log(worker)
    assert_clean_logs(h)


def test_jobs_overrunning_the_grace_are_released(harness: Harness) -> None:
    h = harness
    (long_job,) = h.enqueue([60.0])
    worker = h.start_worker("--concurrency", "1", grace=0.5)
    wait_for(lambda: any(r["ev"] == "start" for r in h.ledger()), 30, "the job to start")
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(30) == 0
    assert time.monotonic() - signalled <= 0.5 + 2
    ((status, attempts, token, errors),) = h.rows(
        "SELECT status, attempts, token, error FROM afterwork_jobs WHERE id = ?", long_job
    )
    assert (status, attempts, token, errors) == ("queued", 0, None, None)  # not charged
    kinds = [k for (k,) in h.rows("SELECT kind FROM afterwork_events ORDER BY id")]
    assert kinds[-1] == "released"


def test_second_signal_stops_at_once_and_releases_leases(harness: Harness) -> None:
    """T-SIG2: a second SIGTERM ends the grace period at once."""
    h = harness
    h.enqueue([60.0] * 3)
    worker = h.start_worker("--concurrency", "3", grace=60)
    wait_for(lambda: sum(r["ev"] == "start" for r in h.ledger()) == 3, 30, "jobs to start")
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping gracefully" in h.log(worker), 10, "the first signal")
    assert worker.poll() is None  # still waiting out the grace
    worker.send_signal(signal.SIGTERM)
    second = time.monotonic()
    assert worker.wait(30) == 0
    assert time.monotonic() - second <= 2.5
    rows = h.rows("SELECT status, attempts, token, lease_expires_at FROM afterwork_jobs")
    assert rows == [("queued", 0, None, None)] * 3  # released now, not left to expire


def test_concurrent_claims_by_four_processes_deliver_each_job_once(harness: Harness) -> None:
    """T-8DEQ (reduced): 4 processes × concurrency 2 on one file, 400 short jobs."""
    h = harness
    rng = random.Random(7)
    ids = h.enqueue([rng.uniform(0, 0.005) for _ in range(400)])
    workers = [h.start_worker("--concurrency", "2") for _ in range(4)]
    wait_for(lambda: h.statuses().get("succeeded", 0) == 400, 90, "every job to succeed")
    starts = Counter(r["job"] for r in h.ledger() if r["ev"] == "start")
    assert set(starts) == set(ids)
    assert max(starts.values()) == 1  # no faults: no job delivered twice
    assert len({r["pid"] for r in h.ledger()}) >= 2  # the work really was shared
    assert max(accepted_completions(h).values()) == 1
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0
    for worker in workers:
        assert "could not claim" not in h.log(worker)
    assert_clean_logs(h)


def test_hand_corrupted_rows_are_quarantined_while_the_worker_runs(harness: Harness) -> None:
    """T-MALFORMED: raw SQL writes bad rows under a running worker; it carries on."""
    h = harness
    worker = h.start_worker("--concurrency", "2")
    (first,) = h.enqueue([0.0])
    wait_for(lambda: h.statuses().get("succeeded") == 1, 30, "the worker to run a job")
    now = time.time()
    html = '"><img src=x onerror=alert(1)>'
    bad = {
        "invalid-json": ("work", "[1,", "{}"),
        "not-a-list": ("work", '{"n": 1}', "{}"),
        "pickle": ("work", "\x80\x04\x95\x1a", "{}"),
        "unknown-task": (f"{html}:missing", "[]", "{}"),
    }
    ids = {}
    with h.connect() as conn:
        for name, (task, args, kwargs) in bad.items():
            ids[name] = new_job_id()
            conn.execute(
                "INSERT INTO afterwork_jobs (id, task, queue, status, args, kwargs, created_at,"
                " run_at, progress_message) VALUES (?, ?, 'default', 'queued', ?, ?, ?, ?, ?)",
                (ids[name], task, args, kwargs, now, now, html),
            )
    good = h.enqueue([0.0, 0.0])
    wait_for(lambda: h.statuses() == Counter({"succeeded": 3, "failed": 4}), 30, "bad rows to fail")
    errors = dict(h.rows("SELECT id, error FROM afterwork_jobs WHERE status = 'failed'"))
    for name in ("invalid-json", "not-a-list", "pickle"):
        assert json.loads(errors[ids[name]])["type"] == "afterwork.MalformedRecord"
    assert json.loads(errors[ids["unknown-task"]])["type"] == "afterwork.TaskNotFound"
    assert worker.poll() is None  # still running
    assert {first, *good} == {
        j for (j,) in h.rows("SELECT id FROM afterwork_jobs WHERE status = 'succeeded'")
    }
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_worker_refuses_a_store_from_a_newer_schema(harness: Harness) -> None:
    h = harness
    with h.connect() as conn:
        conn.execute("UPDATE afterwork_meta SET value = '99' WHERE name = 'schema_version'")
    worker = h.start_worker()
    assert worker.wait(30) == 1
    log = h.log(worker)
    assert "schema version 99" in log and "newer afterwork" in log
