"""The CLI for a newcomer: --version, a careful purge, 80-column tables, clear load errors."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from afterwork.__about__ import __version__
from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.sqlite import SQLiteBackend
from afterwork.job import JobError, new_job_id

ROOT = Path(__file__).resolve().parents[2]


def afterwork(
    *args: str,
    url: str | None = None,
    cwd: Path = ROOT,
    columns: int = 200,
    stdin: int | None = subprocess.DEVNULL,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    # src first: the checkout under test, whatever afterwork the environment installed.
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": str(columns)}
    env.pop("AFTERWORK_URL", None)
    if url is not None:
        env["AFTERWORK_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "afterwork", *args],
        cwd=cwd,
        env=env,
        stdin=None if input_text is not None else stdin,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Three failed jobs with long names and errors, two succeeded, one queued."""
    path = tmp_path / "afterwork.db"

    async def fill() -> None:
        backend = SQLiteBackend(str(path))
        await backend.open()
        try:
            task = "app.notifications.tasks:send_the_weekly_digest_email_to_every_customer"
            jobs = [NewJob(id=new_job_id(), task=task, queue="notifications") for _ in range(5)]
            await backend.enqueue(jobs)
            claims = await backend.claim("w:1:abc", queues=None, limit=5, lease_ttl=300)
            for n, claim in enumerate(claims):
                if n < 3:
                    message = "the SMTP relay refused the message: 554 5.7.1 " + "x" * 80
                    outcome = Outcome.failed(JobError("SMTPDataError", message, "Traceback"))
                else:
                    outcome = Outcome.succeeded(None)
                await backend.finish(claim.lease, outcome)
            await backend.enqueue([NewJob(id=new_job_id(), task=task)])
        finally:
            await backend.aclose()

    asyncio.run(fill())
    return f"sqlite:///{path}"


def test_version() -> None:
    result = afterwork("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"afterwork {__version__}"


def test_purge_needs_a_yes_outside_a_terminal_and_has_a_dry_run(store: str) -> None:
    older = ["--older-than", "0"]
    dry = afterwork("purge", *older, "--dry-run", url=store)
    assert dry.returncode == 0, dry.stderr
    assert "would purge 5 finished job(s)" in dry.stdout
    assert afterwork("purge", *older, "--dry-run", "--json", url=store).stdout.strip() == (
        '{\n  "would_purge": 5\n}'
    )
    refused = afterwork("purge", *older, url=store)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "would purge 5" in afterwork("purge", *older, "--dry-run", url=store).stdout
    done = afterwork("purge", *older, "--yes", url=store)
    assert done.returncode == 0 and "purged 5 finished job(s)" in done.stdout
    # Nothing left to delete: no question to ask.
    assert afterwork("purge", *older, url=store).returncode == 0


@pytest.mark.parametrize(("answer", "deleted"), [("n", False), ("y", True)])
def test_purge_asks_in_a_terminal(store: str, answer: str, deleted: bool) -> None:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, f"{answer}\n".encode())
        result = afterwork("purge", "--older-than", "0", url=store, stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert "Delete 5 finished job(s)?" in result.stderr
    left = afterwork("purge", "--older-than", "0", "--dry-run", url=store).stdout
    if deleted:
        assert result.returncode == 0 and "purged 5" in result.stdout
        assert "would purge 0" in left
    else:
        assert result.returncode == 1 and "nothing was deleted" in result.stderr
        assert "would purge 5" in left


def test_tables_fit_80_columns(store: str) -> None:
    jobs = afterwork("jobs", "list", url=store, columns=80)
    assert jobs.returncode == 0, jobs.stderr
    where, *lines = [line for line in jobs.stdout.splitlines() if line.strip()]
    assert where.startswith("store: sqlite:///")  # a path: as long as it is
    assert all(len(line) <= 80 for line in lines), jobs.stdout
    header, _, *rows = lines
    assert header.split() == ["id", "task", "status", "tries", "error"]
    assert len(rows) == 6  # one line per job, nothing wrapped
    for row in rows:
        assert re.match(r"[0-9a-f]{32} ", row), row  # the whole id, to copy into `jobs show`
        assert row.split()[2] in ("failed", "succeeded", "queued"), row
    queues = afterwork("queues", url=store, columns=80)
    assert queues.returncode == 0, queues.stderr
    assert all(len(line) <= 80 for line in queues.stdout.splitlines()[1:]), queues.stdout
    assert "notifications" in queues.stdout and "failed" in queues.stdout
    wide = afterwork("jobs", "list", url=store, columns=200)
    assert wide.stdout.split()[2:9] == [
        "id",
        "task",
        "queue",
        "status",
        "tries",
        "created",
        "error",
    ]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "jobs.py").write_text(
        "from afterwork import Afterwork\naw = Afterwork('memory://')\nnot_aw = 42\n"
    )
    (tmp_path / "app" / "broken.py").write_text("import math\nraise RuntimeError('no config')\n")
    (tmp_path / "app" / "typo.py").write_text("def f(:\n    pass\n")
    (tmp_path / "app" / "needs.py").write_text("import not_installed_anywhere_xyz\n")
    return tmp_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("app/jobs.py:aw", "give the module's import path instead: app.jobs:aw"),
        ("./app/jobs.py:aw", "app.jobs:aw"),
        ("jobs.py:aw", "jobs:aw"),
        ("app.nothing:aw", "cannot import module 'app.nothing'"),
        ("app.broken:aw", "RuntimeError: no config (at "),
        ("app.typo:aw", "SyntaxError"),
        ("app.needs:aw", "No module named 'not_installed_anywhere_xyz' (at "),
        ("app.jobs:missing", "has no attribute 'missing'"),
        ("app.jobs:not_aw", "is a int, not an Afterwork instance"),
        ("app.jobs", "expected MODULE:ATTRIBUTE"),
    ],
)
def test_an_unloadable_target_exits_2_with_one_line(
    project: Path, target: str, expected: str
) -> None:
    for command in (["worker", target], ["jobs", "list", "--app", target]):
        result = afterwork(*command, cwd=project)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr  # one line
        assert result.stderr.startswith("error: "), result.stderr
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_docs_list_every_command() -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(r"## Commands\n\n```sh\n(.*?)```", page, flags=re.DOTALL)
    assert block is not None
    listed = {tuple(line.split()[1:3]) for line in block[1].splitlines() if line.strip()}
    commands = set()
    for line in afterwork("--help").stdout.splitlines():
        match = re.match(r"│ (\w+) ", line)
        if match:
            commands.add(match[1])
    assert {"worker", "jobs", "queues", "purge", "schedules"} <= commands
    for command in commands:
        if command == "jobs":
            for sub in ("list", "show", "cancel", "retry"):
                assert ("jobs", sub) in listed, sub
        else:
            assert any(entry[0] == command for entry in listed), command
    assert "--version" in page and "--dry-run" in page and "--yes" in page
