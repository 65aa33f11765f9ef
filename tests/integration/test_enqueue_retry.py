"""An enqueue is safe to retry (issue 14): Redis paused past the socket timeout.

A stream of enqueues runs while Redis is paused (``CLIENT PAUSE``) for longer than the
client's socket timeout and its retry window: some enqueues are acknowledged, some raise
``EnqueueUnconfirmed``. Afterwards the store holds every acknowledged job, no job that was
reported as surely not stored, and nothing else: stored == acknowledged + (some of) the
ambiguous ones. Retrying the ambiguous enqueues with the same jobs stores each exactly once,
and a worker then runs every stored job exactly once.

The second test stops the server process itself (SIGSTOP, as a hung host or a long fork
would) while a real ``afterwork worker`` process runs the jobs, its own calls timing out too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobStatus
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import EnqueueUnconfirmed

from ..redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

STREAM = 150
ROOT = Path(__file__).resolve().parents[2]
PAUSE_APP = "tests.integration.redis_pause_app:aw"


async def test_paused_redis_leaves_no_phantom_and_no_double_job(redis_url: str) -> None:
    prefix = f"afterwork:e{uuid.uuid4().hex[:10]}"
    store = RedisBackend(redis_url, prefix=prefix, socket_timeout=0.2, retry_for=0.4)
    aw = Afterwork(backend=store)
    ran: Counter[int] = Counter()

    @aw.task(name="record")
    async def record(n: int) -> int:
        ran[n] += 1
        return n

    admin = aioredis.from_url(redis_url)
    acknowledged: set[str] = set()
    ambiguous: list[EnqueueUnconfirmed] = []
    async with aw:
        pause = asyncio.Event()

        async def stream() -> None:
            for n in range(STREAM):
                if n == STREAM // 3:
                    pause.set()
                    await asyncio.sleep(0)  # let the pause be sent first
                try:
                    job = await record.enqueue(n)
                except EnqueueUnconfirmed as exc:
                    ambiguous.append(exc)
                else:
                    acknowledged.add(job.id)

        async def pauser() -> None:
            await pause.wait()
            await admin.client_pause(1500, all=True)

        await asyncio.gather(stream(), pauser())
        assert ambiguous, "the pause caused no unconfirmed enqueue: the test proved nothing"
        unsure = {i for exc in ambiguous if exc.may_exist for i in exc.job_ids}
        surely_not = {i for exc in ambiguous if not exc.may_exist for i in exc.job_ids}
        assert unsure, "a paused server had the requests: they may have been applied"
        assert all("retrying the same enqueue is safe" in str(exc) for exc in ambiguous)

        stored = {job.id for job in await aw.list_jobs(limit=10 * STREAM)}
        assert acknowledged <= stored
        assert stored <= acknowledged | unsure
        assert not stored & surely_not

        # Retrying the ambiguous calls with the same jobs: one job each, never two.
        for exc in ambiguous:
            await aw.enqueue_many(list(exc.jobs))
        again = await aw.list_jobs(limit=10 * STREAM)
        assert len(again) == len(acknowledged) + len(unsure | surely_not)

        await aw.drain()
        final = await aw.list_jobs(limit=10 * STREAM)
        assert {job.status for job in final} == {JobStatus.SUCCEEDED}
        assert all(count == 1 for count in ran.values())
        assert sum(ran.values()) == len(final)
    await admin.aclose()


def _start_worker(env: dict[str, str], err: Path) -> subprocess.Popen[bytes]:
    with err.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "afterwork", "worker", PAUSE_APP, "-c", "4"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )


def _read(path: Path) -> str:
    return path.read_text()


async def _wait_started(err: Path, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker logged that it started (its store open, claiming)."""
    with anyio.fail_after(30):
        while True:
            log = _read(err)
            assert worker.poll() is None, log
            if " started (concurrency" in log:
                return
            await anyio.sleep(0.05)


async def _wait_all_succeeded(aw: Afterwork, count: int, worker: subprocess.Popen[bytes]) -> None:
    """Until the store holds ``count`` jobs, all succeeded (the worker must stay alive)."""
    with anyio.fail_after(60):
        while True:
            assert worker.poll() is None, "the worker died"
            jobs = await aw.list_jobs(limit=10 * STREAM)
            if len(jobs) == count and all(j.status is JobStatus.SUCCEEDED for j in jobs):
                return
            await anyio.sleep(0.05)


async def test_stopped_redis_with_a_worker_running(tmp_path: Path) -> None:
    """The server process is stopped (SIGSTOP) in the middle of a stream of enqueues while an
    ``afterwork worker`` runs the jobs; it is let go (SIGCONT) once enqueues have timed out.
    stored == acknowledged + some of the ambiguous ones; retrying the ambiguous ones adds
    one job each; every job is run exactly once."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    assert server.process is not None
    prefix = f"afterwork:s{uuid.uuid4().hex[:10]}"
    runs_file = tmp_path / "runs"
    runs_file.touch()
    env = {
        **os.environ,
        "AFTERWORK_URL": server.url,
        "AFTERWORK_TEST_PREFIX": prefix,
        "AFTERWORK_TEST_RUNS": str(runs_file),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    err = tmp_path / "worker.err"
    worker = _start_worker(env, err)
    store = RedisBackend(server.url, prefix=prefix, socket_timeout=0.2, retry_for=0.4)
    aw = Afterwork(backend=store)
    record = aw.task(name="record")(_record)
    acknowledged: set[str] = set()
    ambiguous: list[EnqueueUnconfirmed] = []
    stopped = False
    try:
        await _wait_started(err, worker)
        async with aw:
            for n in range(STREAM):
                if n == STREAM // 3:
                    os.kill(server.process.pid, signal.SIGSTOP)
                    stopped = True
                try:
                    job = await record.enqueue(n)
                except EnqueueUnconfirmed as exc:
                    ambiguous.append(exc)
                    if len(ambiguous) >= 2:
                        # Past the socket timeout and the retry window, twice: let it go.
                        os.kill(server.process.pid, signal.SIGCONT)
                        stopped = False
                else:
                    acknowledged.add(job.id)
            assert not stopped, "no enqueue timed out while Redis was stopped"
            unsure = {i for exc in ambiguous if exc.may_exist for i in exc.job_ids}
            surely_not = {i for exc in ambiguous if not exc.may_exist for i in exc.job_ids}
            assert unsure, "a stopped server had the requests: they may have been applied"

            stored = {job.id for job in await aw.list_jobs(limit=10 * STREAM)}
            assert acknowledged <= stored
            assert stored <= acknowledged | unsure
            assert not stored & surely_not
            await _wait_all_succeeded(aw, len(stored), worker)

            for unconfirmed in ambiguous:  # the documented way: retry the same jobs
                await aw.enqueue_many(list(unconfirmed.jobs))
            total = len(acknowledged) + len(unsure | surely_not)
            assert total == STREAM
            await _wait_all_succeeded(aw, total, worker)
            final = {job.id: job for job in await aw.list_jobs(limit=10 * STREAM)}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, err.read_text()
    finally:
        if stopped:
            os.kill(server.process.pid, signal.SIGCONT)
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        server.stop()
    runs = Counter(line.split()[0] for line in runs_file.read_text().splitlines())
    assert set(runs) == set(final)
    twice = {job_id: count for job_id, count in runs.items() if count > 1}
    assert not twice, f"jobs run more than once: {twice}"
    assert sorted(final[job_id].result for job_id in runs) == list(range(STREAM))


def _record(n: int) -> int:
    return n  # the enqueuer's side of the task; the worker's records each run
