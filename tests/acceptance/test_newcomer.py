"""A newcomer never gets lost: where the store is, and tasks defined in a script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    environment = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", **env}
    environment.pop("AFTERWORK_URL", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


SCRIPT = """
import asyncio, logging, sys
from afterwork import Afterwork

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
aw = Afterwork("sqlite:///./afterwork.db")

@aw.task
async def send(to: str) -> str:
    return "sent to " + to

if __name__ == "__main__":
    job = send.enqueue_sync("ada@example.com")
    print(job.task)
"""


def test_a_task_in_a_script_gets_the_name_a_worker_finds(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(SCRIPT)
    enqueued = run(["jobs.py"], tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    assert enqueued.stdout.strip() == "jobs:send"
    # Every process that opens a store says where it is, as an absolute path.
    assert f"afterwork store: sqlite:///{tmp_path}/afterwork.db" in enqueued.stderr
    # What `afterwork worker jobs:aw` does: import the module, run the job.
    drained = run(["-c", "import asyncio, jobs; print(asyncio.run(jobs.aw.drain()))"], tmp_path)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.strip() == "1"
    listed = run(["-m", "afterwork", "jobs", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == f"store: sqlite:///{tmp_path}/afterwork.db"
    assert "jobs:send" in listed.stdout and "succeeded" in listed.stdout


def test_a_script_inside_a_package_is_named_by_its_import_path(tmp_path: Path) -> None:
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(SCRIPT)
    as_file = run(["app/jobs.py"], tmp_path)
    assert as_file.returncode == 0, as_file.stderr
    assert as_file.stdout.strip() == "app.jobs:send"
    as_module = run(["-m", "app.jobs"], tmp_path)
    assert as_module.stdout.strip() == "app.jobs:send", as_module.stderr


INLINE = textwrap.dedent(
    """
    import asyncio
    from afterwork import Afterwork, EnqueueError

    async def main(url):
        aw = Afterwork(url)

        @aw.task
        async def send(to: str) -> str:
            return to

        async with aw:
            try:
                job = await send.enqueue("x")
            except EnqueueError as exc:
                print("refused:", exc)
            else:
                print("stored:", job.task, await aw.drain())
            async with aw.worker():  # the lifespan's in-process worker
                job = await send.enqueue("y")
                print("in-process:", (await job.wait(timeout=10)).status.value)

    asyncio.run(main({url!r}))
    """
)


def test_a_task_in_main_that_no_worker_can_import_is_refused_for_a_shared_store(
    tmp_path: Path,
) -> None:
    shared = run(["-c", INLINE.format(url="sqlite:///./afterwork.db")], tmp_path)
    assert shared.returncode == 0, shared.stderr
    first, second = shared.stdout.splitlines()
    assert first.startswith("refused: task '__main__:main.<locals>.send' was defined in __main__")
    assert "@aw.task(name='main.<locals>.send')" in first and "move it into a module" in first
    assert second == "in-process: succeeded"
    memory = run(["-c", INLINE.format(url="memory://")], tmp_path)
    assert memory.returncode == 0, memory.stderr
    assert memory.stdout.splitlines() == [
        "stored: __main__:main.<locals>.send 1",
        "in-process: succeeded",
    ]


def test_the_worker_command_says_when_the_jobs_are_elsewhere(tmp_path: Path) -> None:
    from .test_worker_reload import Lines

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "jobs.py").write_text(SCRIPT)
    assert run(["jobs.py"], project).returncode == 0  # a job in project/afterwork.db
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), str(project)])
    process = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "jobs:aw"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": path},
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(process)
    try:
        warning = lines.wait_for("holds no jobs")
        assert f"{project}/afterwork.db exists next to" in warning
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        lines.close()
