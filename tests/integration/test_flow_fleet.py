"""Fleet-wide concurrency across real worker processes (issue 13), with a SIGKILL.

Four ``afterwork worker`` processes share one store; the task has ``concurrency=3``. The
jobs write a ledger (start and end of each attempt, by wall clock, on one machine): the
peak of attempts running at once is exactly 3, and after one worker is SIGKILLed while
it runs jobs, its slots come back within the lease (its jobs start again elsewhere and the
fleet runs 3 at once again). 300 jobs in the normal suite; the issue's 2,000 in the soak
tier (``pytest --soak``, ``make soak``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afterwork import Afterwork, JobStatus

from .flow_jobs import capped, rated

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL, REAPER = 2.0, 0.5
JOBS, SECONDS = 300, 0.05  # 5 s of work at 3 at once: the kill and recovery fall inside


class Fleet:
    def __init__(self, url: str, ledger: Path) -> None:
        self.url, self.ledger = url, ledger
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(ledger / "workers.log", "ab")

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "AFTERWORK_URL": self.url, "AFTERWORK_LEDGER": str(self.ledger)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "afterwork", "worker", "tests.integration.flow_jobs:aw",
             "--concurrency", "4"],
            cwd=ROOT, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

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


def running_at_once(
    records: list[dict[str, Any]], killed: int, killed_at: int, after: int = 0
) -> int:
    """The peak of attempts running at once (a killed worker's attempts end at the kill)."""
    ends = {(r["job"], r["attempt"]): r["t"] for r in records if r["ev"] == "end"}
    marks: list[tuple[int, int]] = []
    for r in records:
        if r["ev"] != "start":
            continue
        end = ends.get((r["job"], r["attempt"]))
        if end is None:
            assert r["pid"] == killed, f"an attempt that never ended: {r}"
            end = killed_at
        if end > after:
            marks += [(max(r["t"], after), 1), (end, -1)]
    peak = running = 0
    for _, step in sorted(marks):  # at equal times an end (-1) sorts before a start
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/flow.db"
    if request.param == "postgres":
        return f"{request.getfixturevalue('postgres_url')}?schema=f{uuid.uuid4().hex[:8]}"
    url = request.getfixturevalue("redis_url")
    return f"{url}?prefix=flow{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fleet(store_url: str, tmp_path: Path) -> Iterator[Fleet]:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    fleet = Fleet(store_url, ledger)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def wait_until(condition: Any, deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


@pytest.mark.fleet
async def test_four_workers_run_at_most_three_and_a_killed_workers_slots_come_back(
    store_url: str, fleet: Fleet
) -> None:
    await prove_the_cap(store_url, fleet, JOBS)


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_cap_holds_over_the_issues_two_thousand_jobs(
    store_url: str, fleet: Fleet
) -> None:
    """The issue's size: 2,000 jobs (about 35 s at 3 at once), in the soak tier."""
    await prove_the_cap(store_url, fleet, 2000)


async def prove_the_cap(store_url: str, fleet: Fleet, jobs: int) -> None:
    client = Afterwork(store_url)
    client.register(capped.func, name="capped", options=capped.opts)
    async with client:
        task = client.get_task("capped")
        ids = [(await task.enqueue(n, SECONDS)).id for n in range(jobs)]
        procs = {proc.pid: proc for proc in [fleet.spawn() for _ in range(4)]}
        busy: list[int] = []

        def a_worker_is_busy() -> bool:
            # Past the first jobs, a worker holding an attempt right now is the victim
            # (whichever it is: the store decides who gets the three slots).
            records = fleet.records()
            ended = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
            running = [
                r["pid"] for r in records
                if r["ev"] == "start" and (r["job"], r["attempt"]) not in ended
            ]  # fmt: skip
            if len(ended) >= 6 and running:
                busy.append(running[0])
                return True
            return False

        wait_until(a_worker_is_busy, 60, "a worker to be running a job")
        victim = procs[busy[0]]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed_at = time.time_ns()
        records = fleet.records()
        ended = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
        in_flight = {
            r["job"] for r in records
            if r["pid"] == victim.pid and r["ev"] == "start"
            and (r["job"], r["attempt"]) not in ended
        }  # fmt: skip
        assert in_flight

        async def all_done() -> bool:
            # One read of the counts, then each job once they add up.
            stats = await client.stats()
            if sum(q.counts.get(JobStatus.SUCCEEDED, 0) for q in stats) < len(ids):
                return False
            found = [await client.get_job(job_id) for job_id in ids]
            return all(j is not None and j.status is JobStatus.SUCCEEDED for j in found)

        end = time.monotonic() + 120 + jobs * SECONDS / 3
        while not await all_done():
            assert time.monotonic() < end, "every job should succeed"
            await asyncio.sleep(0.1)
    records = fleet.records()
    assert running_at_once(records, victim.pid, killed_at) == 3
    # The victim's jobs ran again elsewhere.
    restarted = {
        r["job"] for r in records
        if r["job"] in in_flight and r["pid"] != victim.pid and r["ev"] == "start"
    }  # fmt: skip
    assert restarted == in_flight
    # Its slots came back within the lease (plus two reaper passes and a margin): from then
    # on the fleet ran three at once again.
    back_by = killed_at + int((LEASE_TTL + 2 * REAPER + 1.0) * 1e9)
    assert max(r["t"] for r in records) > back_by, "the run ended before the slots came back"
    assert running_at_once(records, victim.pid, killed_at, after=back_by) == 3


# -- rate limits across the fleet -------------------------------------------------------
#
# Four worker processes, one task with ``RateLimit(50, per=1.0)`` and a backlog larger than
# the run can drain. Each job writes its attempt's start as the store stamped it
# (``started_at``, the time the limit's log holds) and the wall time its code ran. Over the
# run no one-second window holds more than 50 starts, and the throughput reaches at least
# 90 % of the limit. The normal suite runs it for a few seconds; the soak tier
# (``pytest --soak``, ``make soak``) for the issue's 60 seconds.

LIMIT, PER = 50, 1.0


def starts_in_windows(starts: list[float], per: float) -> int:
    """The most starts any half-open window ``[a, a + per)`` holds."""
    starts = sorted(starts)
    peak, left = 0, 0
    for right, at in enumerate(starts):
        while starts[left] <= at - per:
            left += 1
        peak = max(peak, right - left + 1)
    return peak


async def run_for(store_url: str, fleet: Fleet, seconds: float) -> list[dict[str, Any]]:
    client = Afterwork(store_url)
    client.register(rated.func, name="rated", options=rated.opts)
    async with client:
        task = client.get_task("rated")
        backlog = int(LIMIT * (seconds + 2) * 1.2)  # never runs dry during the run
        await client.enqueue_many([client.build_job(task, (n,), {}, {}) for n in range(backlog)])
        for _ in range(4):
            fleet.spawn()
        end = time.monotonic() + 60
        while not fleet.records():
            assert time.monotonic() < end, "a worker should start a job"
            await asyncio.sleep(0.05)
        await asyncio.sleep(seconds + 0.5)
    fleet.stop_all()
    return [r for r in fleet.records() if r["ev"] == "rated"]


def check(records: list[dict[str, Any]], seconds: float) -> None:
    stamped = [float(r["s"]) for r in records]
    assert len({r["job"] for r in records}) == len(records), "a job started twice"
    peak = starts_in_windows(stamped, PER)
    first = min(stamped)
    within = sum(first <= s < first + seconds for s in stamped)
    ran = [r["t"] / 1e9 for r in records]
    sys.stdout.write(  # the figures, for docs/benchmarks.md (pytest -s)
        f"rate fleet: {len(records)} starts, peak {peak} per {PER}s window (started_at),"
        f" {starts_in_windows(ran, PER)} by the code's wall clock;"
        f" {within / seconds:.1f} starts/s over {seconds:.0f}s\n"
    )
    assert peak <= LIMIT
    # Throughput is ``limit / (per + latency)``, the latency from a slot opening to the
    # next start: on a machine whose cores are each shared by more than three runnable
    # processes it is not this code's to meet (docs/benchmarks.md), so it is reported.
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    if within < 0.9 * LIMIT * seconds / PER and load > 3:
        pytest.skip(
            f"the limit held (peak {peak}); throughput {within / seconds:.1f}/s not checked:"
            f" load average {load:.1f} per core"
        )
    assert within >= 0.9 * LIMIT * seconds / PER, (within, seconds)


@pytest.mark.fleet
async def test_fifty_per_second_across_four_workers(store_url: str, fleet: Fleet) -> None:
    seconds = 4.0
    check(await run_for(store_url, fleet, seconds), seconds)


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_fifty_per_second_across_four_workers_for_a_minute(
    store_url: str, fleet: Fleet
) -> None:
    seconds = 60.0
    check(await run_for(store_url, fleet, seconds), seconds)


def test_the_window_count_is_right() -> None:
    assert starts_in_windows([0.0, 0.5, 0.999, 1.0, 1.5], 1.0) == 3
    assert starts_in_windows([0.0, 1.0, 2.0], 1.0) == 1
    assert starts_in_windows([], 1.0) == 0
