"""Where the store is, said without secrets; a worker meeting a ``__main__`` task says why."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus, TaskNotFound
from afterwork._location import redact_url
from afterwork.backends.base import NewJob
from afterwork.job import new_job_id

pytestmark = pytest.mark.anyio


def test_urls_are_shown_without_their_password() -> None:
    assert redact_url("redis://:s3cret@cache:6380/0") == "redis://:***@cache:6380/0"
    assert redact_url("rediss://app:s3cret@[::1]/1?prefix=x") == "rediss://app:***@[::1]/1?prefix=x"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert "s3cret" not in Afterwork("redis://u:s3cret@127.0.0.1:1/0").location


async def test_opening_a_store_logs_its_absolute_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    aw = Afterwork("sqlite:///./afterwork.db")
    with caplog.at_level(logging.INFO, logger="afterwork"):
        async with aw:
            pass
    assert f"afterwork store: sqlite:///{tmp_path}/afterwork.db" in caplog.messages
    assert aw.location == f"sqlite:///{tmp_path}/afterwork.db"
    assert Afterwork("memory://").location == "memory:// (this process only)"


async def test_a_worker_meeting_a_main_task_says_how_to_fix_it() -> None:
    async with Afterwork("memory://") as aw:
        (job,) = await aw.enqueue_many([NewJob(id=new_job_id(), task="__main__:send")])
        await aw.drain()
        failed = await aw.get_job(job.id)
        assert failed is not None and failed.status is JobStatus.FAILED
        assert failed.error is not None and failed.error.type == "afterwork.TaskNotFound"
        assert "defined in __main__" in failed.error.message
        assert "@aw.task(name='send')" in failed.error.message
        with pytest.raises(TaskNotFound, match="move it into a module"):
            aw.get_task("__main__:send")


async def test_a_worker_started_from_another_folder_says_where_the_jobs_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from afterwork._cli_lost import lost_store_warning

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    module = project / "lost_store_app.py"
    module.write_text(
        "from afterwork import Afterwork\naw = Afterwork('sqlite:///./afterwork.db')\n"
    )
    # The jobs are in the store beside the app (enqueued from the project's folder).
    async with Afterwork(f"sqlite:///{project}/afterwork.db") as there:

        @there.task(name="t")
        async def t() -> None: ...

        await t.enqueue()
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(elsewhere)
    lost_store_app = importlib.import_module("lost_store_app")
    request.addfinalizer(lambda: sys.modules.pop("lost_store_app", None))

    message = lost_store_warning(lost_store_app.aw, "lost_store_app:aw")
    assert message is not None
    assert f"store {elsewhere}/afterwork.db holds no jobs" in message
    assert f"{project}/afterwork.db exists next to" in message
    # From the project's folder, the same app opens the right store: nothing to say.
    monkeypatch.chdir(project)
    assert lost_store_warning(Afterwork("sqlite:///./afterwork.db"), "lost_store_app:aw") is None
    # A store of its own that holds work: nothing to say either.
    async with Afterwork(f"sqlite:///{elsewhere}/afterwork.db") as own:

        @own.task(name="t")
        async def t2() -> None: ...

        await t2.enqueue()
    monkeypatch.chdir(elsewhere)
    assert lost_store_warning(lost_store_app.aw, "lost_store_app:aw") is None
