"""docs/services.md, "Dependencies": the code shown is the code run."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from afterwork import Afterwork, Job
from afterwork.services import ServiceState

from ..waiting import eventually
from .conftest import ROOT, python_blocks

pytestmark = pytest.mark.anyio


def test_the_dependencies_section_shows_the_tested_code() -> None:
    code = (ROOT / "examples/docs/service_dependencies.py").read_text()
    (block,) = [b for b in python_blocks("services.md") if "Depends(get_bus)" in b]
    assert block in code


async def test_the_service_gets_its_bus_and_closes_it_on_stop() -> None:
    from examples.docs import service_dependencies as ex

    async with ex.aw.lifespan(FastAPI()):
        (status,) = ex.aw.services
        assert status.state is ServiceState.RUNNING
        assert ex.BUS.open
        await ex.BUS.queue.put("hello")
        job = await eventually(lambda: _first_job(ex.aw))
        done = await job.wait(timeout=10)
        assert done.args == ["hello"]
    assert not ex.BUS.open  # the dependency was torn down when the service stopped
    assert ex.handled == ["hello"]


async def _first_job(aw: Afterwork) -> Job | None:
    jobs = await aw.list_jobs()
    return jobs[0] if jobs else None
