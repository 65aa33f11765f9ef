from __future__ import annotations

import dataclasses
import os
import random
import uuid
import warnings
from typing import cast

import pytest

from afterwork import JobStatus, Retry
from afterwork.exceptions import InvalidTransition
from afterwork.job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Job,
    JobAttempt,
    JobError,
    JobOwner,
    check_transition,
    new_job_id,
)
from afterwork.retry import ExponentialBackoff


def test_status_is_a_str_enum_with_the_six_states() -> None:
    assert [s.value for s in JobStatus] == [
        "scheduled",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert str(JobStatus.QUEUED) == "queued"
    assert isinstance(JobStatus.QUEUED, str)
    assert TERMINAL_STATUSES | ACTIVE_STATUSES == set(JobStatus)
    assert not TERMINAL_STATUSES & ACTIVE_STATUSES


def test_transitions() -> None:
    check_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    check_transition(JobStatus.RUNNING, JobStatus.SCHEDULED)
    check_transition(JobStatus.FAILED, JobStatus.QUEUED)
    for bad in [
        (JobStatus.SUCCEEDED, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),
        (JobStatus.SCHEDULED, JobStatus.FAILED),
        (JobStatus.CANCELLED, JobStatus.RUNNING),
    ]:
        with pytest.raises(InvalidTransition):
            check_transition(*bad)
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()


def test_job_ids_sort_by_creation_and_are_unique() -> None:
    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(len(i) == 32 for i in ids)
    # Same-millisecond ids may tie on the time prefix, never go backwards on it.
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes)


def test_job_ids_are_uuid7_strictly_increasing_across_random_blocks() -> None:
    ids = [new_job_id() for _ in range(5000)]  # several blocks of the buffered random bits
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert {uuid.UUID(i).variant for i in ids} == {uuid.RFC_4122}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    new_job_id()  # the parent's buffer of random bits is filled
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12 warns of fork() beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its next id, then out at once
        try:
            os.write(write, new_job_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = new_job_id()
    # Without the reset at fork both would read the same bytes: same id in one millisecond.
    assert len(child) == 32 and child[-15:] != parent[-15:]


def test_told_is_replace_of_created_now_and_owner() -> None:
    job = Job(
        id="x", task="t", queue="q", status=JobStatus.FAILED, args=[1], kwargs={"a": 2},
        priority=3, attempts=2, max_attempts=4, recoveries=1, key="k", created_at=1.0,
        run_at=2.0, started_at=3.0, finished_at=4.0, result=5, error=JobError("E", "m"),
        progress=0.5, progress_message="p", timeout=6.0, result_ttl=7.0, worker="w",
        lease_expires_at=8.0, cancel_requested=True, waiting_reason="r",
        timeline=(JobAttempt(1, 1.0, 2.0, "w", "failed"),), headers={"h": "v"},
    )  # fmt: skip
    owner = cast("JobOwner", object())
    told = job.told(True, owner)
    expected = dataclasses.replace(job, created_now=True, _owner=owner)
    for item in dataclasses.fields(Job):
        assert getattr(told, item.name) is getattr(expected, item.name), item.name
    assert job.created_now is None and job._owner is None  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        told.id = "y"  # type: ignore[misc]


def test_job_error_truncates_and_survives_bad_str() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    try:
        raise Weird()
    except Weird as exc:
        error = JobError.from_exception(exc)
    assert error.message == "<unprintable Weird>"
    assert error.type.endswith("Weird")
    huge = JobError.from_exception(ValueError("x" * 2_000_000))
    assert len(huge.message) < 5_000
    assert len(huge.traceback) <= 64 * 1024 + 100
    assert "characters cut" in huge.traceback
    assert JobError.from_dict(huge.to_dict()) == huge


def test_exponential_backoff_caps_and_jitters() -> None:
    policy = Retry.exponential(base=1.0, cap=10.0, jitter=False)
    rng = random.Random(0)
    assert [policy.delay(n, rng) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(10_000, rng) == 10  # no overflow
    jittered = ExponentialBackoff(base=1.0, cap=10.0)
    samples = [jittered.delay(4, rng) for _ in range(500)]
    assert all(0 <= s <= 8 for s in samples)
    assert max(samples) > 6 and min(samples) < 2
    assert Retry.fixed(3).delay(5, rng) == 3
    with pytest.raises(ValueError):
        Retry.later(-1)
    with pytest.raises(ValueError):
        ExponentialBackoff(base=-1)
