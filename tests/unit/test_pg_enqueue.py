from __future__ import annotations

import asyncio

import pytest

from afterwork.backends._pg_enqueue import (
    KEY,
    MANY,
    NULL,
    ONE,
    insert_one_statement,
    insert_statement,
    one_params,
    params,
    while_sent,
)
from afterwork.backends.base import NewJob
from afterwork.job import new_job_id

pytestmark = pytest.mark.anyio


async def test_while_sent_returns_the_reply_and_the_work_done_meanwhile() -> None:
    order: list[str] = []

    async def statement() -> str:
        order.append("sent")
        await asyncio.sleep(0)  # the reply comes a loop turn later
        return "reply"

    def work() -> int:
        order.append("work")
        return 42

    assert await while_sent(statement(), work) == ("reply", 42)
    assert order == ["sent", "work"]  # the statement goes out before the work starts


async def test_while_sent_cancels_and_waits_for_the_statement_when_the_work_fails() -> None:
    ended = asyncio.Event()

    async def statement() -> str:
        try:
            await asyncio.Event().wait()  # a statement that runs until cancelled
        finally:
            ended.set()
        return "never"

    def work() -> int:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await while_sent(statement(), work)
    assert ended.is_set()  # waited for: nothing runs on after it


async def test_while_sent_cancelled_cancels_the_statement_and_keeps_its_error() -> None:
    ended = asyncio.Event()
    started = asyncio.Event()

    async def statement() -> str:
        started.set()
        try:
            await asyncio.Event().wait()  # a statement that runs until cancelled
        finally:
            ended.set()
        return "never"

    pending = asyncio.ensure_future(while_sent(statement(), lambda: 1))
    await started.wait()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert ended.is_set()

    async def failing() -> str:
        raise RuntimeError("statement failed")

    with pytest.raises(RuntimeError, match="statement failed"):
        await while_sent(failing(), lambda: 1)


_JOBS = [
    NewJob(id=new_job_id(), task="t"),
    NewJob(
        id=new_job_id(), task="t", queue="q", args=[1, "a"], kwargs={"x": [2]}, key="k",
        priority=-3, max_attempts=4, delay=5.0, timeout=3.0, result_ttl=0.0,
        headers={"h": "v"},
    ),
    NewJob(id=new_job_id(), task="t", delay=-1.0, result_ttl=60.0),
]  # fmt: skip


@pytest.mark.parametrize("job", _JOBS)
def test_a_batch_of_one_job_repeated_sends_only_its_ids_as_an_array(job: NewJob) -> None:
    shape, values = params([job, job, job], 12.5)
    assert MANY not in shape  # every column shared (or all NULL): one value, or none
    assert not any(isinstance(value, list) for value in values)
    sql = insert_statement('"s"', shape)
    assert sql.count("[]") == 1 and "$1::text[]" in sql  # the ids alone
    assert "CASE" not in sql  # no choice per row and column


def test_a_column_that_differs_between_jobs_comes_as_an_array() -> None:
    first, second, third = _JOBS
    shape, values = params([first, second, third], 12.5)
    # task shared; queue, status, args, kwargs, priority, max_attempts, key, run_at,
    # timeout, result_ttl, headers differ
    assert shape == (ONE, *[MANY] * 11)
    assert values[0] == "t" and values[1] == ["default", "q", "default"]
    shape, values = params([first, third], 12.5)
    # timeout and headers all NULL, key too; result_ttl one NULL, one not
    assert shape[KEY] == NULL and shape[-3:] == (NULL, MANY, NULL)
    assert values[-1] == [None, 60.0]
    sql = insert_statement('"s"', shape)
    assert "NULL::text" in sql and sql.count("[]") == 1 + shape.count(MANY)
    assert insert_statement('"s"', shape) is sql  # built once per shape


@pytest.mark.parametrize("job", _JOBS)
def test_one_jobs_scalar_parameters_are_its_row_in_the_batch_statements(job: NewJob) -> None:
    shape, values = params([job, job], 12.5)
    given = iter(values)
    row = [None if how == NULL else next(given) for how in shape]
    assert one_params(job, 12.5) == (job.id, *row[: KEY + 1], 12.5, *row[KEY + 1 :])


def test_one_jobs_statement_has_no_arrays_and_is_built_once_per_schema() -> None:
    for conflicts in (True, False):
        sql = insert_one_statement('"s"', conflicts=conflicts)
        assert "unnest" not in sql and "[]" not in sql
        assert ("ON CONFLICT DO NOTHING" in sql) is conflicts
        assert insert_one_statement('"s"', conflicts=conflicts) is sql
