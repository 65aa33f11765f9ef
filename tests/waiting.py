"""Bounded waits on conditions: tests never sleep to wait for time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, interval: float = 0.01
) -> T:
    """Poll ``check`` until it returns something other than ``None``/``False``.

    Raises ``TimeoutError`` after ``timeout`` seconds: the condition never came true.
    """
    with anyio.fail_after(timeout):
        while True:
            value = await check()
            if value is not None and value is not False:
                return value
            await anyio.sleep(interval)
