"""Process isolation (issue 14): a job's crash, runaway loop or memory hog ends its child
process, never the worker; the timeout is hard; cancel kills the child; children are reused.

The worker here is the test process itself: that it is still running each test's
assertions, and runs an in-process job beside the bad ones, is the "worker never noticed".
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.job import Job

from ..waiting import eventually
from . import isolation_tasks as t

pytestmark = pytest.mark.anyio

WAIT = 30  # seconds: the bound on every wait below; none is reached when things work


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    config = t.aw.config
    async with t.aw:
        yield t.aw
    t.aw.config = config


async def drain(aw: Afterwork, *jobs: Job, concurrency: int = 4) -> list[Job]:
    async with asyncio.timeout(WAIT):
        await aw.drain(concurrency=concurrency)
    done = [await aw.get_job(job.id) for job in jobs]
    assert all(job is not None for job in done)
    return [job for job in done if job is not None]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def gone(pid: int, within: float) -> bool:
    async def check() -> bool:
        return not alive(pid)

    return await eventually(check, timeout=within)


async def test_result_context_progress_and_depends_run_in_the_child(aw: Afterwork) -> None:
    (job,) = await drain(aw, await t.with_context.enqueue("ada"))
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["name"] == "ada"
    assert job.result["job"] == job.id
    assert job.result["greet"] == "hello from a dependency"
    assert job.result["pid"] != os.getpid()
    assert job.progress == 0.5
    assert job.progress_message == "half way"


async def test_crashes_fail_the_attempt_naming_the_signal_and_retry_by_policy(
    aw: Afterwork,
) -> None:
    jobs = [
        await t.segfault.enqueue(),
        await t.aborts.enqueue(),
        await t.exits.enqueue(3),
        await t.in_process.enqueue(),
    ]
    segfault, aborts, exits, bystander = await drain(aw, *jobs)
    for job, words in ((segfault, "SIGSEGV (signal 11)"), (aborts, "SIGABRT (signal 6)")):
        assert job.status is JobStatus.FAILED
        assert job.attempts == 2  # retries=1: the crash counts as a failed attempt
        assert job.recoveries == 0  # not a worker death
        assert job.error is not None and job.error.type == "afterwork.ProcessDied"
        assert job.error.message == f"the job's process was killed by {words}"
    assert exits.status is JobStatus.FAILED and exits.attempts == 1
    assert exits.error is not None
    assert exits.error.message == "the job's process exited with code 3"
    assert bystander.status is JobStatus.SUCCEEDED
    assert bystander.result == os.getpid()  # ran in this very process, which lives on


async def test_retry_and_dont_retry_raised_in_the_child_follow_the_policy(aw: Afterwork) -> None:
    retried, refused = await drain(
        aw, await t.asks_retry.enqueue(), await t.raises_key_error.enqueue()
    )
    assert retried.status is JobStatus.FAILED and retried.attempts == 3
    assert retried.error is not None and retried.error.type == "afterwork.retry.Retry"
    assert refused.status is JobStatus.FAILED and refused.attempts == 1
    assert refused.error is not None and refused.error.type == "KeyError"
    assert "raise KeyError" in refused.error.traceback  # the child's own traceback


async def test_the_timeout_is_hard_and_the_child_is_gone_within_the_grace(
    aw: Afterwork, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    (job,) = await drain(aw, await t.spins.enqueue(str(pid_file)))
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.type == "TimeoutError"
    assert "0.3s timeout" in job.error.message
    assert await gone(int(pid_file.read_text()), within=aw.config.kill_grace + 1)


async def test_the_slot_frees_at_once_and_sigkill_follows_an_ignored_sigterm(
    aw: Afterwork, tmp_path: Path
) -> None:
    aw.config = dataclasses.replace(aw.config, kill_grace=5.0)
    pid_file = tmp_path / "pid"
    async with asyncio.timeout(WAIT), aw.worker(concurrency=1):
        job = await t.ignores_sigterm.enqueue(str(pid_file))
        done = await aw.wait_for_job(job.id, timeout=WAIT)
        # The attempt is over while its child, deaf to SIGTERM, still waits for SIGKILL.
        assert done.status is JobStatus.FAILED
        assert done.error is not None and done.error.type == "TimeoutError"
        pid = int(pid_file.read_text())
        assert alive(pid)
        after = await t.pid.enqueue()  # the one slot is free: this runs meanwhile
        assert (await aw.wait_for_job(after.id, timeout=WAIT)).status is JobStatus.SUCCEEDED
        assert alive(pid)
        assert await gone(pid, within=5.0 + 2)


async def test_over_its_memory_limit_the_child_is_killed_with_a_clear_error(
    aw: Afterwork,
) -> None:
    (job,) = await drain(aw, await t.hog.enqueue())
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.type == "afterwork.MemoryLimitExceeded"
    assert "over its max_memory_mb=100 limit; it was killed" in job.error.message


async def test_cancel_of_a_running_isolated_job_kills_its_child(
    aw: Afterwork, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    async with asyncio.timeout(WAIT), aw.worker(concurrency=1):
        job = await t.sleeps.enqueue(str(pid_file))

        async def started() -> bool:
            return pid_file.exists() and bool(pid_file.read_text())

        await eventually(started, timeout=WAIT)
        pid = int(pid_file.read_text())
        await aw.cancel(job.id)
        done = await aw.wait_for_job(job.id, timeout=WAIT)
        assert done.status is JobStatus.CANCELLED
        assert await gone(pid, within=aw.config.kill_grace + 2)


async def test_children_are_reused_then_recycled_after_max_jobs_per_child(
    aw: Afterwork,
) -> None:
    jobs = await drain(aw, *[await t.pid.enqueue() for _ in range(7)], concurrency=1)
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs)
    pids = Counter(job.result for job in jobs)
    assert sorted(pids.values()) == [1, 3, 3]  # max_jobs_per_child=3
    assert os.getpid() not in pids


async def test_a_result_json_cannot_hold_fails_the_attempt(aw: Afterwork) -> None:
    (job,) = await drain(aw, await t.unserializable.enqueue())
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.type == "afterwork.ResultNotSerializable"


async def test_the_worker_wide_default_isolates_every_task_unless_it_says_none(
    aw: Afterwork,
) -> None:
    aw.config = dataclasses.replace(aw.config, isolation="process")
    (job,) = await drain(aw, await t.in_process.enqueue())
    assert job.status is JobStatus.SUCCEEDED
    assert job.result != os.getpid()


async def test_a_task_a_child_cannot_import_fails_with_an_actionable_error(aw: Afterwork) -> None:
    @aw.task(isolation="process")
    def local() -> None: ...

    try:
        (job,) = await drain(aw, await local.enqueue())
    finally:
        del aw.tasks[local.name]
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.type == "TypeError"
    assert "define it at module level in an importable module" in job.error.message


async def test_a_job_within_its_timeout_succeeds_on_a_fresh_child_and_a_reused_one(
    aw: Afterwork,
) -> None:
    jobs = await drain(aw, *[await t.timed_but_quick.enqueue(n) for n in range(3)], concurrency=1)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 3
    assert [job.result for job in jobs] == [1, 2, 3]
