"""docs/flow-control.md: the rate limit, debounce and waiting-reason examples run."""

from __future__ import annotations

import pytest

from afterwork import Afterwork
from afterwork.testing import FakeClock

from .conftest import ROOT, assert_blocks_are_code

pytestmark = pytest.mark.anyio


def test_the_sections_show_the_tested_code() -> None:
    assert_blocks_are_code(
        "flow-control.md",
        ROOT / "examples/docs/flow_control.py",
        ROOT / "examples/docs/flow_pause.py",
        ROOT / "examples/docs/flow_bulk.py",
        ROOT / "examples/docs/flow_rate.py",
        ROOT / "examples/docs/flow_debounce.py",
    )


async def test_the_rate_limit_example() -> None:
    from examples.docs import flow_rate as ex

    ex.sent.clear()
    async with ex.aw:
        status, reason = await ex.a_burst_of_calls()
    assert status == "queued"
    assert reason is not None and reason.startswith(
        'rate limit: 2 starts in the last 60s for api_host="api.example.com"'
    )
    assert sorted(ex.sent) == [
        "api.example.com/items/0",
        "api.example.com/items/1",
        "other.example.com/items/0",
    ]


async def test_the_debounce_example() -> None:
    from examples.docs import flow_debounce as ex

    ex.indexed.clear()
    async with ex.aw:
        assert await ex.on_save(1, "draft") is True
        assert await ex.on_save(1, "draft, edited") is False
        assert await ex.on_save(1, "final") is False
        assert await ex.aw.drain() == 0  # not quiet for 5 s yet
        (job,) = await ex.aw.list_jobs()
        assert job.kwargs == {} and job.args == [1, "final"]
    assert ex.indexed == []


async def test_the_debounced_task_runs_once_with_the_last_text_after_the_window() -> None:
    """The example's task and options on a store with a fake clock (no waiting)."""
    from examples.docs import flow_debounce as ex

    clock = FakeClock()
    aw = Afterwork("memory://", clock=clock)
    reindex = aw.register(ex.reindex.func, name="reindex", options=ex.reindex.opts)
    ex.indexed.clear()
    async with aw:
        for text in ("draft", "draft, edited", "final"):
            await reindex.options(key="doc:1").enqueue(1, text)
            clock.advance(3)  # saves 3 s apart: the window starts again each time
        assert await aw.drain() == 0
        clock.advance(2)  # 5 s after the last save
        assert await aw.drain() == 1
    assert ex.indexed == ["final"]
