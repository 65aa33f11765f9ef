"""Declaring flow limits: bad input is refused at declaration or enqueue, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from afterwork import Afterwork, EnqueueError
from afterwork.backends.base import Inspector, JobFilter

pytestmark = pytest.mark.anyio


def test_concurrency_key_must_name_an_argument() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ValueError, match=r"concurrency_key 'customer' is not an argument"):

        @aw.task(concurrency=1, concurrency_key="customer")
        async def call(customer_id: int) -> None: ...

    assert aw.tasks == {}


def test_concurrency_key_needs_a_cap_and_an_argument_passable_by_name() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ValueError, match="concurrency_key needs concurrency"):
        aw.task(concurrency_key="customer_id")
    with pytest.raises(ValueError, match="ordinary or keyword-only"):

        @aw.task(concurrency=1, concurrency_key="customer_id")
        async def positional_only(customer_id: int, /) -> None: ...

    with pytest.raises(ValueError, match="without \\*args"):

        @aw.task(concurrency=1, concurrency_key="customer_id")
        async def star_args(customer_id: int, *rest: int) -> None: ...


@pytest.mark.parametrize("option", ["concurrency", "local_concurrency"])
@pytest.mark.parametrize("value", [0, -1])
def test_limits_must_be_positive(option: str, value: int) -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ValueError, match=f"{option} must be at least 1"):
        aw.task(**{option: value})  # type: ignore[call-overload]


async def test_a_key_value_that_is_not_a_json_scalar_is_refused_and_nothing_stored() -> None:
    aw = Afterwork("memory://")

    @aw.task(concurrency=1, concurrency_key="account")
    async def sync_account(account: Any) -> None: ...

    async with aw:
        for bad in ({"id": 1}, [1, 2]):
            with pytest.raises(EnqueueError, match="must be a JSON scalar"):
                await sync_account.enqueue(bad)
        assert isinstance(aw.backend, Inspector)
        assert await aw.backend.list_jobs(JobFilter()) == []


async def test_the_key_argument_is_stored_by_name_with_its_default() -> None:
    aw = Afterwork("memory://")

    @aw.task(concurrency=2, concurrency_key="host")
    async def fetch(path: str, host: str = "api", retries: int = 1) -> None: ...

    async with aw:
        given = await fetch.enqueue("/a", "b.example", 3)
        default = await fetch.enqueue("/a")
    assert (given.args, given.kwargs) == (["/a"], {"host": "b.example", "retries": 3})
    assert (default.args, default.kwargs) == (["/a"], {"host": "api"})
    # The stored arguments still call the function with the same values.
    assert fetch.codec.decode(given.args, given.kwargs) == (("/a", "b.example", 3), {})
