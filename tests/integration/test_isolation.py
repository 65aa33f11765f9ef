"""One isolated worker, real processes, SQLite and Redis (issue 14, "How we will know").

1 segfaulting + 1 busy-looping (``timeout=0.5``) + 1 memory-hogging (``max_memory_mb=200``)
job and 200 normal ones on one ``afterwork worker --isolation process`` (about 11 s per
store on a loaded 2-core machine): every normal job succeeds, the worker process never
dies, the three bad ones end ``failed`` with the right error after their retry, and each
busy-loop child is gone within the kill grace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from afterwork.backends.base import NewJob
from afterwork.job import TERMINAL_STATUSES, JobStatus, new_job_id

from .test_poison import jobs, with_store

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.isolation_app:aw"
NORMAL = 200
KILL_GRACE = 1.0  # isolation_app's kill_grace


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/isolation.db"
    base = request.getfixturevalue("redis_url")
    return f"{base}?prefix=afterwork:i{uuid.uuid4().hex[:10]}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bad_jobs_end_their_child_never_the_worker(store_url: str, tmp_path: Path) -> None:
    bad = {
        name: NewJob(id=new_job_id(), task=name, max_attempts=2, timeout=timeout)
        for name, timeout in (("segfault", None), ("busy", 0.5), ("hog", None))
    }
    normal = [
        NewJob(id=new_job_id(), task="normal", args=[n], max_attempts=1) for n in range(NORMAL)
    ]
    with_store(store_url, lambda store: store.enqueue([*bad.values(), *normal]))
    ids = [job.id for job in bad.values()] + [job.id for job in normal]
    pids_file = tmp_path / "busy.pids"
    env = {
        **os.environ,
        "AFTERWORK_URL": store_url,
        "AFTERWORK_TEST_PIDS": str(pids_file),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    err_path = tmp_path / "worker.err"
    with open(err_path, "wb") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "afterwork", "worker", APP, "-c", "4", "--isolation", "process"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        busy_done_at: float | None = None
        while True:
            assert worker.poll() is None, f"the worker died: {err_path.read_text()}"
            current = jobs(store_url, ids)
            if busy_done_at is None and current[bad["busy"].id].status in TERMINAL_STATUSES:
                busy_done_at = time.monotonic()
            if all(job.status in TERMINAL_STATUSES for job in current.values()):
                break
            assert time.monotonic() < deadline, "not done after 120 s"
            time.sleep(0.05)
        # The busy loop's children (one per attempt) are gone within the grace.
        assert busy_done_at is not None
        busy_pids = [int(line) for line in pids_file.read_text().split()]
        assert len(busy_pids) == 2
        while any(alive(pid) for pid in busy_pids):
            assert time.monotonic() < busy_done_at + KILL_GRACE + 1.0, "a busy child outlived it"
            time.sleep(0.02)
        assert worker.poll() is None, f"the worker died: {err_path.read_text()}"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, err_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)

    final = jobs(store_url, ids)
    assert [final[job.id].status for job in normal] == [JobStatus.SUCCEEDED] * NORMAL
    assert [final[job.id].result for job in normal] == [n * 2 for n in range(NORMAL)]
    expected = {
        "segfault": ("afterwork.ProcessDied", "killed by SIGSEGV (signal 11)"),
        "busy": ("TimeoutError", "within its 0.5s timeout"),
        "hog": ("afterwork.MemoryLimitExceeded", "over its max_memory_mb=200 limit"),
    }
    for name, (kind, words) in expected.items():
        job = final[bad[name].id]
        assert job.status is JobStatus.FAILED, name
        assert job.attempts == 2, name  # the retry ran, and failed the same way
        assert job.recoveries == 0, name  # the worker never died holding it
        assert job.error is not None and job.error.type == kind, (name, job.error)
        assert words in job.error.message, (name, job.error.message)
