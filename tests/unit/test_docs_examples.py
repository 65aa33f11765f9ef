"""The examples in docs/schedules.md and docs/services.md, run as tests."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI

from afterwork.services import ServiceState

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("doc", "example"),
    [("schedules.md", "docs_schedules.py"), ("services.md", "docs_services.py")],
)
def test_docs_show_the_tested_examples(doc: str, example: str) -> None:
    text = (ROOT / "docs" / doc).read_text()
    code = (ROOT / "examples" / example).read_text()
    assert f"```python\n{code}```" in text


async def test_schedules_example() -> None:
    from examples import docs_schedules as ex

    names = {info.name: info for info in ex.aw.schedules}
    assert set(names) == {ex.daily_report.name, ex.nightly_cleanup.name, "refresh-rates"}
    assert ex.nightly_cleanup.opts.retries == 3
    assert names["refresh-rates"].spec == "0:00:30"
    async with ex.aw.lifespan(FastAPI()):
        reply = await ex.run_report_now()
        job = await ex.aw.get_job(reply["job"])
        assert job is not None and job.task == ex.daily_report.name


async def test_services_example() -> None:
    from examples import docs_services as ex

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
