"""The worker's outage log: begin once, end once, and a stale connection right after is quiet."""

from __future__ import annotations

import logging

import pytest

from afterwork._engine.outage import SETTLE, Outage
from afterwork.testing import FakeClock


def test_an_outage_begins_once_and_ends_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    outage = Outage("w1", clock=clock)
    caplog.set_level(logging.DEBUG, logger="afterwork.worker")
    outage.succeeded()  # nothing to end
    for _ in range(4):
        outage.failed("claim", ConnectionError("refused"))
        clock.advance(1.5)
    outage.succeeded()
    outage.succeeded()
    levels = [(r.levelname, getattr(r, "action", None)) for r in caplog.records]
    assert levels == [
        ("WARNING", "store_unreachable"),
        ("DEBUG", "store_retry_failed"),
        ("DEBUG", "store_retry_failed"),
        ("DEBUG", "store_retry_failed"),
        ("WARNING", "store_reachable"),
    ]
    assert caplog.records[-1].outage == {"seconds": 6.0, "failures": 4}  # type: ignore[attr-defined]


def test_one_stale_failure_right_after_an_outage_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    outage = Outage("w1", clock=clock)
    outage.failed("claim", ConnectionError("refused"))
    outage.succeeded()
    caplog.clear()
    clock.advance(SETTLE / 2)
    outage.failed("claim", ConnectionError("closed by server"))  # a stale pooled connection
    outage.succeeded()
    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == []
    outage.failed("claim", ConnectionError("closed"))  # twice in a row: a new outage
    outage.failed("claim", ConnectionError("refused"))
    assert [getattr(r, "action", None) for r in caplog.records if r.levelno >= logging.WARNING] == [
        "store_unreachable"
    ]
    caplog.clear()
    outage.succeeded()
    clock.advance(SETTLE + 1)
    outage.failed("claim", ConnectionError("refused"))  # long after: begins at once
    assert [getattr(r, "action", None) for r in caplog.records if r.levelno >= logging.WARNING] == [
        "store_reachable",
        "store_unreachable",
    ]
