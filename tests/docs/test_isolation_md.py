"""docs/isolation.md: the code shown is the code run."""

from __future__ import annotations

import anyio
import pytest

from afterwork import JobStatus

from .conftest import ROOT

pytestmark = pytest.mark.anyio


def test_the_page_shows_the_tested_example() -> None:
    text = (ROOT / "docs" / "isolation.md").read_text()
    code = (ROOT / "examples/docs/isolation.py").read_text()
    assert f"```python\n{code}```" in text


async def test_the_isolation_example_runs_and_survives_its_crash() -> None:
    from examples.docs import isolation as ex

    async with ex.aw:
        thumbnail = await ex.render_thumbnail.enqueue("cat.png")
        crash = await ex.crash.enqueue()
        with anyio.fail_after(60):
            await ex.aw.drain(concurrency=2)
        done = await ex.aw.get_job(thumbnail.id)
        crashed = await ex.aw.get_job(crash.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.result == "cat.thumb.png"
    assert crashed is not None and crashed.status is JobStatus.FAILED
    assert crashed.error is not None and "SIGSEGV" in crashed.error.message
