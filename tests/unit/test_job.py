from __future__ import annotations

import random

import pytest

from afterwork import JobStatus, Retry
from afterwork.exceptions import InvalidTransition
from afterwork.job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    JobError,
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
