"""The worker's admission step: claimed jobs start only when their limits allow."""

from __future__ import annotations

import asyncio

import pytest

from afterwork import Afterwork

pytestmark = pytest.mark.anyio

WAIT = 10  # seconds: the bound on every wait below; none is reached when things work


async def test_one_claim_batch_is_admitted_within_the_task_limit_in_claim_order() -> None:
    aw = Afterwork("memory://", seed=3, poll_interval=0.2, prefetch=8)
    order: list[int] = []
    running = 0
    peak = 0

    @aw.task(local_concurrency=1)
    async def serial(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        order.append(n)
        await asyncio.sleep(0)  # let the worker try to start the others meanwhile
        running -= 1

    async with aw:
        for n in range(5):
            await serial.enqueue(n)
        async with asyncio.timeout(WAIT):
            # Concurrency 4 with prefetch: all five are claimed in one batch, and the
            # admission step must hold four of them back at every start.
            assert await aw.drain(concurrency=4) == 5
    assert peak == 1
    assert order == [0, 1, 2, 3, 4]
