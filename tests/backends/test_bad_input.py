"""Bad input never gets in: the enqueue API fuzzed on every store.

Each example either stores a job whose fields read back exactly as given, or raises
``EnqueueError`` naming the field and stores nothing; which of the two is decided by the
documented limits (docs/concepts.md, "Limits"), the same on every store.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterwork import Afterwork, EnqueueError, JobStatus
from afterwork.task import MAX_DELAY, MAX_KEY, MAX_QUEUE, PRIORITY_MAX, PRIORITY_MIN

pytestmark = pytest.mark.anyio

# Every code point, lone surrogates and control characters included.
ANY_CHAR = st.characters(codec=None, categories=None)
ANY_TEXT = st.text(ANY_CHAR, max_size=8) | st.text(ANY_CHAR, min_size=190, max_size=520)
NAME_TEXT = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=12)

PRIORITIES = st.one_of(
    st.integers(PRIORITY_MIN - 2, PRIORITY_MAX + 2),
    st.integers(-(2**70), 2**70),
    st.sampled_from([PRIORITY_MIN, PRIORITY_MAX, 2**63, -(2**63) - 1, 2**53 + 1]),
)
DELAYS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, MAX_DELAY * 1.01),
    st.integers(-5, 10**6),
    st.sampled_from([10**400, MAX_DELAY, math.inf, -math.inf, math.nan, -0.0]),
)
KEYS = st.none() | ANY_TEXT | NAME_TEXT
QUEUES = ANY_TEXT | NAME_TEXT | st.just("_reserved")


def _text_ok(value: str, limit: int) -> bool:
    return (
        0 < len(value) <= limit
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


def expected_problem(options: dict[str, Any], note: str) -> str | None:
    """The oracle: the field the documented limits refuse, or ``None``."""
    delay = options["delay"]
    if isinstance(delay, int) and abs(delay) > 10**300:
        return "delay"
    if math.isnan(delay) or not 0 <= delay <= MAX_DELAY:
        return "delay"
    key = options.get("key")
    if key is not None and not _text_ok(key, MAX_KEY):
        return "key"
    if not PRIORITY_MIN <= options["priority"] <= PRIORITY_MAX:
        return "priority"
    queue = options["queue"]
    if not _text_ok(queue, MAX_QUEUE) or queue.startswith("_"):
        return "queue"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in note):
        return "args"
    return None


async def _count(aw: Afterwork) -> int:
    return sum(sum(stats.counts.values()) for stats in await aw.stats())


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    delay=DELAYS,
    key=KEYS,
    priority=PRIORITIES,
    queue=QUEUES,
    note=st.text(ANY_CHAR, max_size=20),
)
async def test_enqueue_stores_exactly_or_refuses_and_stores_nothing(
    aw: Afterwork, delay: float, key: str | None, priority: int, queue: str, note: str
) -> None:
    name = "fuzz:echo"
    if name not in aw.tasks:

        @aw.task(name=name)
        async def echo(note: str) -> None: ...

    task = aw.tasks[name]
    options: dict[str, Any] = {"delay": delay, "priority": priority, "queue": queue}
    if key is not None:
        options["key"] = key
    problem = expected_problem(options, note)
    before = await _count(aw)
    try:
        job = await task.options(**options).enqueue(note)
    except EnqueueError as exc:
        assert problem is not None, f"refused valid input: {exc!r}"
        if problem == "args":
            assert exc.field is None and "arguments" in exc.message, exc.message
        else:
            assert exc.field == problem and problem in exc.message, exc.message
        assert await _count(aw) == before, "a refused enqueue stored something"
        return
    assert problem is None, f"accepted {problem}={options.get(problem, note)!r}"
    stored = await aw.get_job(job.id)
    assert stored == job
    assert (stored.queue, stored.priority, stored.key, stored.args) == (
        queue,
        priority,
        key,
        [note],
    )
    assert stored.run_at == pytest.approx(stored.created_at + delay, abs=1e-5)
    assert stored.status is (JobStatus.SCHEDULED if delay > 0 else JobStatus.QUEUED)
    await aw.cancel(job.id)  # frees the key for the next example
