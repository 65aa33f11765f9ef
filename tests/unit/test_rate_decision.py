"""The sliding log's decision (``afterwork._lifecycle.rate_next_start``), store-free."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afterwork import RateLimit
from afterwork._lifecycle import rate_next_start


def test_admits_until_the_window_holds_the_limit() -> None:
    rate = RateLimit(2, per=10.0)
    assert rate_next_start([], now=100.0, rate=rate) is None
    assert rate_next_start([95.0], now=100.0, rate=rate) is None
    assert rate_next_start([95.0, 99.0], now=100.0, rate=rate) == 105.0
    assert rate_next_start([90.0, 99.0], now=100.0, rate=rate) is None  # 90 left the window
    # A claimed job not started yet counts as starting now.
    assert rate_next_start([95.0], now=100.0, rate=rate, pending=1) == 105.0
    assert rate_next_start([], now=100.0, rate=rate, pending=2) == 110.0


@given(
    starts=st.lists(st.floats(min_value=0.0, max_value=20.0), max_size=30),
    now=st.floats(min_value=10.0, max_value=25.0),
    limit=st.integers(1, 8),
    per=st.floats(min_value=0.5, max_value=10.0),
    pending=st.integers(0, 10),
)
def test_the_most_recent_starts_and_a_count_decide_as_the_whole_log(
    starts: list[float], now: float, limit: int, per: float, pending: int
) -> None:
    """What a store may pass (the ``limit`` most recent starts and how many are in the
    window) decides exactly as the whole log does."""
    starts = [s for s in starts if s <= now]
    rate = RateLimit(limit, per=per)
    whole = rate_next_start(starts, now=now, rate=rate, pending=pending)
    window = sorted(s for s in starts if s + per > now)
    tail = window[-limit:]
    assert rate_next_start(tail, now=now, rate=rate, pending=pending, begun=len(window)) == whole
    if whole is not None:
        assert whole > now - 1e-9
        # At the answer, one more is admitted (pending ones having started by then).
        assert len([s for s in window if s + per > whole]) + pending <= limit or pending >= limit


def test_rate_limit_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RateLimit(0, per=1.0)
    with pytest.raises(ValueError, match="must be positive"):
        RateLimit(1, per=0)
