"""Per-minute history on every store: the store contract, and the recorder end to end."""

from __future__ import annotations

import pytest

from afterwork import Afterwork, Retry
from afterwork.backends.base import HistoryRow, HistoryStore
from afterwork.history import BUCKETS, History, HistoryPoint
from afterwork.testing import FakeClock

from .conftest import AwFactory

pytestmark = pytest.mark.anyio

MINUTE = 1_700_000_040.0  # a whole minute


def row(minute: float, task: str = "t", queue: str = "q", **fields: object) -> HistoryRow:
    return HistoryRow(minute=minute, task=task, queue=queue, **fields)  # type: ignore[arg-type]


async def test_rows_of_one_minute_add_up_and_read_back_in_order(aw: Afterwork) -> None:
    store = aw.backend
    assert isinstance(store, HistoryStore)
    first = row(MINUTE, succeeded=2, failed=1, run_sum=0.5, run_buckets={3: 2, 40: 1},
                wait_sum=1.25, wait_buckets={0: 3})  # fmt: skip
    second = row(MINUTE, succeeded=1, retried=4, run_sum=0.25, run_buckets={3: 1, 88: 4})
    other_task = row(MINUTE, task="a", succeeded=7)
    later = row(MINUTE + 60, queue="z", failed=1, run_buckets={5: 1})
    await store.record_history([first, other_task])
    await store.record_history([second, later])  # a second flush of the same minute
    await store.record_history([])

    got = await store.read_history(since=MINUTE, until=MINUTE + 120)
    assert got == [
        other_task,
        row(MINUTE, succeeded=3, failed=1, retried=4, run_sum=0.75,
            run_buckets={3: 3, 40: 1, 88: 4}, wait_sum=1.25, wait_buckets={0: 3}),
        later,
    ]  # fmt: skip
    assert await store.read_history(since=MINUTE + 60, until=MINUTE + 120) == [later]
    assert await store.read_history(since=MINUTE, until=MINUTE + 60, task="a") == [other_task]
    assert await store.read_history(since=0, until=MINUTE * 2, queue="z") == [later]
    assert await store.read_history(since=MINUTE + 120, until=MINUTE + 600) == []

    await store.purge_history(before=MINUTE + 60)
    assert await store.read_history(since=0, until=MINUTE * 2) == [later]


async def test_the_recorder_counts_a_known_mix_per_minute(
    make_aw: AwFactory, clock: FakeClock
) -> None:
    aw = make_aw()
    history = History(aw)
    tries = {"flaky": 0}

    @aw.task(name="ok")
    async def ok() -> None: ...

    @aw.task(name="flaky", retries=1, backoff=Retry.fixed(0.0))
    async def flaky() -> None:
        tries["flaky"] += 1
        if tries["flaky"] == 1:
            raise ConnectionError("first try")

    @aw.task(name="broken", queue="other")
    async def broken() -> None:
        raise ValueError("never")

    async with aw:
        await ok.enqueue()
        await ok.enqueue()
        await flaky.enqueue()
        clock.advance(7.0)  # due at once, started 7 s later
        assert await aw.drain(queues=["default"]) == 4  # attempts
        clock.advance(60.0)  # the next minute
        await broken.enqueue()
        assert await aw.drain() == 1
        await history.flush()
        minute = clock() - clock() % 60.0

        by_task = {
            (p.task, p.queue): p
            for p in await aw.history(since=minute - 600, until=minute + 60, step=600)
        }
        assert set(by_task) == {("ok", "default"), ("flaky", "default"), ("broken", "other")}
        assert (by_task["ok", "default"].succeeded, by_task["ok", "default"].attempts) == (2, 2)
        flaky_point = by_task["flaky", "default"]
        assert (flaky_point.succeeded, flaky_point.retried, flaky_point.attempts) == (1, 1, 2)
        assert (by_task["broken", "other"].failed, by_task["broken", "other"].attempts) == (1, 1)
        wait = by_task["ok", "default"].wait_p50
        assert wait is not None and 7.0 / 1.19 <= wait <= 7.0 * 1.19  # within its bucket
        run = by_task["ok", "default"].run_p95
        assert run is not None and run < 1.0

        per_minute = await aw.history(since=minute - 60, until=minute + 60, by=())
        assert [(p.at, p.task, p.succeeded, p.failed, p.retried) for p in per_minute] == [
            (minute - 60, None, 3, 0, 1),
            (minute, None, 0, 1, 0),
        ]
        only = await aw.history(since=minute - 60, until=minute + 60, task="ok", by=("queue",))
        assert [(p.queue, p.attempts) for p in only] == [("default", 2)]


async def test_history_flushes_on_close_and_purges_past_its_retention(
    make_aw: AwFactory, clock: FakeClock
) -> None:
    aw = make_aw()
    History(aw, retention=600.0)

    @aw.task(name="ok")
    async def ok() -> None: ...

    async with aw:
        await ok.enqueue()
        assert await aw.drain() == 1
    store = aw.backend
    assert isinstance(store, HistoryStore)
    async with aw:  # closing flushed the tally
        (kept,) = await store.read_history(since=0, until=clock() + 60)
        assert kept.succeeded == 1

        clock.advance(3_600.0)  # past the retention, and an hour since the last purge
        await ok.enqueue()
        assert await aw.drain() == 1
    async with aw:
        (left,) = await store.read_history(since=0, until=clock() + 60)
        assert left.minute == clock() - clock() % 60.0  # the old minute was purged


async def test_history_of_a_store_with_none_is_empty_and_steps_are_whole_minutes(
    aw: Afterwork,
) -> None:
    assert await aw.history() == []
    with pytest.raises(ValueError, match="whole number of minutes"):
        await aw.history(step=90)
    with pytest.raises(ValueError, match="finite"):
        await aw.history(since=float("-inf"))


def test_quantiles_are_read_within_a_bucket() -> None:
    from afterwork.history import quantile

    assert quantile({}, 0.5) is None
    index = 40
    estimate = quantile({index: 10}, 0.5)
    assert estimate is not None and BUCKETS[index - 1] <= estimate <= BUCKETS[index]
    assert quantile({len(BUCKETS): 3}, 0.95) == BUCKETS[-1]
    assert HistoryPoint.__dataclass_fields__.keys() >= {"run_p95", "wait_p95"}


async def test_a_failed_flush_is_kept_for_the_next_one(
    make_aw: AwFactory, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend_name == "memory":
        pytest.skip("the memory store cannot be made unreachable")
    aw = make_aw()
    history = History(aw)

    @aw.task(name="ok")
    async def ok() -> None: ...

    async with aw:
        await ok.enqueue()
        assert await aw.drain() == 1
        await aw.backend.aclose()  # the store is gone: the flush fails
        await history.flush()
        await history.flush()  # still failing: logged once
        warnings = [r for r in caplog.records if r.getMessage().startswith("could not write")]
        assert len(warnings) == 1
        await aw.backend.open()
        await ok.enqueue()
        assert await aw.drain() == 1
        await history.flush()
        store = aw.backend
        assert isinstance(store, HistoryStore)
        rows = await store.read_history(since=0, until=aw.backend.now() + 60)
        assert sum(r.succeeded for r in rows) == 2  # the kept tally and the new one
