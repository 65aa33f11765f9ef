"""docs/schedules.md: the code shown is the code run."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from .conftest import ROOT

pytestmark = pytest.mark.anyio


def test_the_page_shows_the_tested_example() -> None:
    text = (ROOT / "docs" / "schedules.md").read_text()
    code = (ROOT / "examples/docs/schedules.py").read_text()
    assert f"```python\n{code}```" in text


async def test_schedules_example() -> None:
    from examples.docs import schedules as ex

    names = {info.name: info for info in ex.aw.schedules}
    assert set(names) == {ex.daily_report.name, ex.nightly_cleanup.name, "refresh-rates"}
    assert ex.nightly_cleanup.opts.retries == 3
    assert names["refresh-rates"].spec == "0:00:30"
    async with ex.aw.lifespan(FastAPI()):
        reply = await ex.run_report_now()
        job = await ex.aw.get_job(reply["job"])
        assert job is not None and job.task == ex.daily_report.name
