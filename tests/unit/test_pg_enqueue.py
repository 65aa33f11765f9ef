from __future__ import annotations

import asyncio

import pytest

from afterwork.backends import _pg_enqueue
from afterwork.backends._pg_enqueue import insert_one_statement, one_params, params, while_sent
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


@pytest.mark.parametrize(
    "job",
    [
        NewJob(id=new_job_id(), task="t"),
        NewJob(
            id=new_job_id(), task="t", queue="q", args=[1, "a"], kwargs={"x": [2]}, key="k",
            priority=-3, max_attempts=4, delay=5.0, timeout=3.0, result_ttl=0.0,
            headers={"h": "v"},
        ),
        NewJob(id=new_job_id(), task="t", delay=-1.0, result_ttl=60.0),
    ],
)  # fmt: skip
def test_the_parameters_of_one_job_are_those_of_a_batch_of_it(job: NewJob) -> None:
    one = params([job], 12.5)
    assert one == _pg_enqueue._params_of_many([job], 12.5)
    twice = _pg_enqueue._params_of_many([job, job], 12.5)
    # a batch of the same job twice: each shared column comes as one element, as for one job
    assert (one[0][1:8], one[0][9:11]) == (twice[0][1:8], twice[0][9:11])


@pytest.mark.parametrize(
    "job",
    [
        NewJob(id=new_job_id(), task="t"),
        NewJob(
            id=new_job_id(), task="t", queue="q", args=[1, "a"], kwargs={"x": [2]}, key="k",
            priority=-3, max_attempts=4, delay=5.0, timeout=3.0, result_ttl=0.0,
            headers={"h": "v"},
        ),
        NewJob(id=new_job_id(), task="t", delay=-1.0, result_ttl=60.0),
    ],
)  # fmt: skip
def test_one_jobs_scalar_parameters_are_its_row_in_the_batch_statements(job: NewJob) -> None:
    columns, headers = params([job], 12.5)
    row = [
        column if n == 9 else (column[0] if column else None) for n, column in enumerate(columns)
    ]
    assert one_params(job, 12.5) == (*row, headers[0] if headers else None)


def test_one_jobs_statement_has_no_arrays_and_is_built_once_per_schema() -> None:
    for conflicts in (True, False):
        sql = insert_one_statement('"s"', conflicts=conflicts)
        assert "unnest" not in sql and "[]" not in sql
        assert ("ON CONFLICT DO NOTHING" in sql) is conflicts
        assert insert_one_statement('"s"', conflicts=conflicts) is sql
