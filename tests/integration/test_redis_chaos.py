"""Chaos on Redis (RELIABILITY.md T-KILL9, T-BROKER, T-8DEQ, under the T-ACLTLS user).

Real worker processes (``python -m afterwork worker``) against a private redis-server
with AOF (``appendfsync always``) whose only user is limited to the ``afterwork:`` prefix.
Nothing sleeps to wait for time: every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobStatus
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import BackendUnavailable

from ..redis_server import RedisServer
from .conftest import acl_url
from .redis_chaos_jobs import chaos as chaos_task

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL, REAPER = 2.0, 0.5


class Fleet:
    """Worker processes, each in its own process group, plus their ledger."""

    def __init__(self, url: str, ledger: Path) -> None:
        self.url = url
        self.ledger = ledger
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(ledger / "workers.log", "ab")

    def spawn(self, concurrency: int = 4) -> subprocess.Popen[bytes]:
        env = {**os.environ, "AFTERWORK_URL": self.url, "AFTERWORK_LEDGER": str(self.ledger)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "afterwork", "worker", "tests.integration.redis_chaos_jobs:aw",
             "--concurrency", str(concurrency)],
            cwd=ROOT, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.log.close()

    def records(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for path in self.ledger.glob("*.jsonl"):
            lines.extend(json.loads(line) for line in path.read_text().splitlines() if line)
        return lines


async def until(condition: Callable[[], Any], deadline: float, what: str) -> None:
    """Poll ``condition`` (sync or async) until true, or fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


@pytest.fixture
def server(acl_redis: RedisServer) -> RedisServer:
    return acl_redis


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Afterwork]:
    aw = Afterwork(backend=RedisBackend.from_url(acl_url(server), retry_for=1.0))
    aw.register(chaos_task.func, name="chaos")
    async with aw:
        yield aw


@pytest.fixture
def fleet(server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    fleet = Fleet(acl_url(server), ledger)
    try:
        yield fleet
    finally:
        fleet.stop_all()


async def succeeded_events(server: RedisServer) -> Counter[str]:
    """Accepted completions per job, read from the store's event stream."""
    raw = aioredis.Redis(port=server.port, username="aw", password="pw", decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = await raw.xrange("afterwork:events")  # type: ignore[assignment]
    finally:
        await raw.aclose()
    return Counter(data["j"] for _, data in entries if data["k"] == "succeeded")


async def all_succeeded(aw: Afterwork, ids: list[str]) -> bool:
    stats = {s.queue: s for s in await aw.stats()}
    counts = stats["default"].counts if "default" in stats else {}
    return counts.get(JobStatus.SUCCEEDED, 0) >= len(ids)


async def enqueue(aw: Afterwork, count: int, seconds: float, start: int = 0) -> list[str]:
    task = aw.get_task("chaos")
    jobs = [await task.enqueue(start + n, seconds) for n in range(count)]
    return [job.id for job in jobs]


async def check_every_job_once(aw: Afterwork, server: RedisServer, ids: list[str]) -> None:
    for job_id in ids:
        job = await aw.get_job(job_id)
        assert job is not None and job.status is JobStatus.SUCCEEDED, job
    completions = await succeeded_events(server)
    assert all(completions[job_id] == 1 for job_id in ids), "a duplicate accepted completion"


async def test_sigkill_a_worker_mid_run(
    client: Afterwork, server: RedisServer, fleet: Fleet
) -> None:
    ids = await enqueue(client, 60, 0.4)
    victim = fleet.spawn()
    fleet.spawn()

    def victim_busy() -> bool:
        # Past its first jobs, and holding one right now (a kill between two rounds of jobs
        # would leave nothing in flight to recover).
        records = [r for r in fleet.records() if r["pid"] == victim.pid]
        starts = {(r["job"], r["attempt"]) for r in records if r["ev"] == "start"}
        ends = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
        return len(starts) >= 3 and bool(starts - ends)

    await until(victim_busy, 30, "the victim to be running jobs")
    fleet.kill(victim)
    killed_at = time.time_ns()
    records = fleet.records()
    ended = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
    in_flight = {
        r["job"] for r in records
        if r["pid"] == victim.pid and r["ev"] == "start" and (r["job"], r["attempt"]) not in ended
    }  # fmt: skip
    assert in_flight, "the victim should hold jobs when killed"
    fleet.spawn()
    await until(lambda: all_succeeded(client, ids), 60, "every job to succeed")
    await check_every_job_once(client, server, ids)
    restarts: dict[str, int] = defaultdict(lambda: 2**63)
    for r in fleet.records():
        if r["job"] in in_flight and r["pid"] != victim.pid and r["ev"] == "start":
            restarts[r["job"]] = min(restarts[r["job"]], r["t"])
    assert set(restarts) == in_flight, "every job in flight at the kill runs again"
    recovery = max(restarts.values()) - killed_at
    assert recovery / 1e9 <= LEASE_TTL + 2 * REAPER + 2.0


async def test_redis_restart_mid_run(client: Afterwork, server: RedisServer, fleet: Fleet) -> None:
    ids = await enqueue(client, 40, 0.2)
    workers = [fleet.spawn(), fleet.spawn()]
    await until(lambda: len(fleet.records()) >= 10, 30, "jobs to start")
    server.kill()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await enqueue(client, 1, 0.0)
    assert time.monotonic() - started < 5.0
    server.start()
    ids += await enqueue(client, 20, 0.2, start=100)  # acknowledged after the restart
    await until(lambda: all_succeeded(client, ids), 60, "every acknowledged job to succeed")
    await check_every_job_once(client, server, ids)
    assert all(proc.poll() is None for proc in workers), "workers survived without restart"


async def test_eight_workers_never_run_a_job_twice(
    client: Afterwork, server: RedisServer, fleet: Fleet
) -> None:
    ids = await enqueue(client, 200, 0.005)
    for _ in range(8):
        fleet.spawn(concurrency=1)
    await until(lambda: all_succeeded(client, ids), 90, "every job to succeed")
    await check_every_job_once(client, server, ids)
    starts = Counter(r["job"] for r in fleet.records() if r["ev"] == "start")
    assert set(starts) == set(ids)
    assert max(starts.values()) == 1, "a job was delivered twice without any fault"
    assert len({r["pid"] for r in fleet.records()}) > 1
