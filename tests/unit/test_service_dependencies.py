"""FastAPI ``Depends`` in services: resolved per run, cleaned up, overridable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request

from afterwork import Afterwork, ServiceContext
from afterwork.exceptions import DependencyError

pytestmark = pytest.mark.anyio

WAIT = 10


class Bus:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


log: list[str] = []


async def get_bus() -> AsyncIterator[Bus]:
    bus = Bus("real")
    log.append("open real")
    try:
        yield bus
    finally:
        bus.closed = True
        log.append("close real")


def needs_request(request: Request) -> str:
    return request.url.path


def service_name(ctx: ServiceContext) -> str:
    return ctx.name


async def test_service_dependencies_are_resolved_cleaned_up_and_overridable() -> None:
    log.clear()
    aw = Afterwork("memory://")
    seen: list[tuple[str, str]] = []
    running = asyncio.Event()

    @aw.service(name="consumer")
    async def consumer(
        ctx: ServiceContext,
        bus: Annotated[Bus, Depends(get_bus)],
        me: Annotated[str, Depends(service_name)],
    ) -> None:
        seen.append((bus.name, me))
        running.set()
        await ctx.wait_stopping()

    app = FastAPI()
    async with asyncio.timeout(WAIT):
        async with aw.lifespan(app):
            await running.wait()
        assert seen == [("real", "consumer")]
        assert log == ["open real", "close real"]  # torn down when the service stopped

        async def fake_bus() -> AsyncIterator[Bus]:
            log.append("open fake")
            yield Bus("fake")
            log.append("close fake")

        app.dependency_overrides[get_bus] = fake_bus
        running.clear()
        async with aw.lifespan(app):
            await running.wait()
    assert seen[-1] == ("fake", "consumer")
    assert log[-2:] == ["open fake", "close fake"]


def test_request_bound_dependency_is_refused_for_a_service() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(DependencyError, match="request"):

        @aw.service
        async def bad(value: Annotated[str, Depends(needs_request)]) -> None: ...
