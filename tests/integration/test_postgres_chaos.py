"""Eight worker processes on PostgreSQL, some SIGKILLed mid-drain (RELIABILITY.md T-8DEQ,
T-KILL9): nothing lost, nothing completed twice.

Real ``python -m afterwork worker`` processes on the session's private postgres (a schema
of their own); each job appends to a per-process ledger with ``O_APPEND`` writes, which
survive ``kill -9``. Accepted completions are counted from the store's events table.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus

from .redis_chaos_jobs import chaos as chaos_task
from .test_postgres import schema_url, succeeded_events
from .test_redis_chaos import LEASE_TTL, REAPER, Fleet, until

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

JOBS, WORKERS, VICTIMS = 240, 8, 3


async def test_eight_worker_processes_some_sigkilled_lose_nothing_and_complete_nothing_twice(
    postgres_url: str, tmp_path: Path
) -> None:
    url = schema_url(postgres_url, event_retention="100000")
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    fleet = Fleet(url, ledger)
    aw = Afterwork(url)
    aw.register(chaos_task.func, name="chaos")
    try:
        async with aw:
            task = aw.get_task("chaos")
            jobs = await aw.enqueue_many(
                [aw.build_job(task, (n, 0.05), {}, {}) for n in range(JOBS)]
            )
            ids = [job.id for job in jobs]
            workers = [fleet.spawn(concurrency=2) for _ in range(WORKERS)]
            victims = workers[:VICTIMS]

            def busy(pid: int) -> bool:
                records = [r for r in fleet.records() if r["pid"] == pid]
                starts = {(r["job"], r["attempt"]) for r in records if r["ev"] == "start"}
                ends = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
                return len(starts) >= 2 and bool(starts - ends)

            in_flight: set[str] = set()
            for victim in victims:  # one at a time, each while it holds a job
                await until(partial(busy, victim.pid), 60, "a victim to be running a job")
                fleet.kill(victim)
                records = fleet.records()
                ended = {(r["job"], r["attempt"]) for r in records if r["ev"] == "end"}
                in_flight |= {
                    r["job"] for r in records
                    if r["pid"] == victim.pid and r["ev"] == "start"
                    and (r["job"], r["attempt"]) not in ended
                }  # fmt: skip
            killed_at = time.time_ns()
            assert in_flight, "the victims should hold jobs when killed"

            async def all_done() -> bool:
                return bool(await aw.backend.due_or_running() == 0)  # type: ignore[attr-defined]

            await until(all_done, 120, "every job to finish")
            for job_id in ids:
                job = await aw.get_job(job_id)
                assert job is not None and job.status is JobStatus.SUCCEEDED, job
            completions = await succeeded_events(postgres_url, url)
            assert all(completions.get(job_id) == 1 for job_id in ids), (
                "a lost or double completion"
            )

            records = fleet.records()
            starts = Counter(r["job"] for r in records if r["ev"] == "start")
            assert set(starts) == set(ids)
            # Only jobs a victim had begun ran again (in flight, or ended but killed before
            # its outcome was committed); every other job ran exactly once.
            begun_by_victims = {
                r["job"] for r in records
                if r["pid"] in {v.pid for v in victims} and r["ev"] == "start"
            }  # fmt: skip
            assert {job for job, count in starts.items() if count > 1} <= begun_by_victims
            restarted = {
                r["job"]: r["t"] for r in records
                if r["job"] in in_flight and r["pid"] not in {v.pid for v in victims}
                and r["ev"] == "start"
            }  # fmt: skip
            assert set(restarted) == in_flight, "every job in flight at a kill runs again"
            assert (max(restarted.values()) - killed_at) / 1e9 <= LEASE_TTL + 2 * REAPER + 5.0
            survivors = {r["pid"] for r in records} - {v.pid for v in victims}
            assert len(survivors) > 1, "the survivors shared the work"
            assert all(proc.poll() is None for proc in workers[VICTIMS:])
    finally:
        fleet.stop_all()
