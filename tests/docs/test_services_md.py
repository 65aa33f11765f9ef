"""docs/services.md: the code shown is the code run."""

from __future__ import annotations

import anyio
import pytest
from fastapi import FastAPI

from afterwork import Afterwork, Job, ServiceState

from ..waiting import eventually
from .conftest import ROOT, python_blocks

pytestmark = pytest.mark.anyio


def test_the_page_shows_the_tested_example() -> None:
    text = (ROOT / "docs" / "services.md").read_text()
    code = (ROOT / "examples/docs/services.py").read_text()
    assert f"```python\n{code}```" in text


async def test_services_example() -> None:
    from examples.docs import services as ex

    async with ex.aw.lifespan(ex.app):
        states = {status.name.rpartition(":")[2]: status.state for status in ex.aw.services}
        assert states == {
            "status_updater": ServiceState.RUNNING,
            "queue_consumer": ServiceState.RUNNING,
        }
        with anyio.fail_after(5):
            while ex.latest_status.get("clinic") != "open":
                await anyio.lowlevel.checkpoint()
    assert {status.state for status in ex.aw.services} == {ServiceState.STOPPED}


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


def test_the_singleton_section_shows_the_tested_code() -> None:
    code = (ROOT / "examples/docs/singleton_service.py").read_text()
    assert f"```python\n{code}```" in (ROOT / "docs" / "services.md").read_text()


async def test_singleton_example_runs_one_poller_and_lists_the_instances() -> None:
    import os
    import socket

    from examples.docs import singleton_service as ex

    async with ex.aw.lifespan(ex.app):  # the web process also runs a worker
        states = {status.name.rpartition(":")[2]: status.state for status in ex.aw.services}
        assert states == {
            "inbox_poller": ServiceState.RUNNING,
            "cache_warmer": ServiceState.RUNNING,
        }
        job = await eventually(lambda: _first_job(ex.aw))
        await job.wait(timeout=10)
        assert ex.handled == ["hello"] and ex.warm == {"config": "loaded"}
        found = [
            (i.service.rpartition(":")[2], i.host, i.pid, i.singleton)
            for i in await ex.aw.service_instances()
        ]
        here = (socket.gethostname(), os.getpid())
        assert found == [("cache_warmer", *here, False), ("inbox_poller", *here, True)]
        # A second process on the store would stand by; one declared here shows it.
        other = Afterwork(backend=ex.aw.backend)
        other.service(name=ex.aw.services[0].name, singleton=True)(ex.inbox_poller)
        async with other.runtime(worker=False):  # (it shares, and leaves open, the store)
            (standby,) = other.services
            assert standby.state is ServiceState.STANDBY
    assert {status.state for status in ex.aw.services} == {ServiceState.STOPPED}
