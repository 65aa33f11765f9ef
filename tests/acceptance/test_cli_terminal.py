"""What the CLI prints of job data never drives the operator's terminal."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from afterwork.backends.base import NewJob, Outcome
from afterwork.backends.sqlite import SQLiteBackend
from afterwork.job import JobError, new_job_id

ROOT = Path(__file__).resolve().parents[2]

# Clear the screen, an OSC 8 hyperlink, an 8-bit CSI, a bell, a bidi override.
HOSTILE = "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\x9b31m\a\u202e"
ESCAPES = ("\x1b", "\x9b", "\x07", "\u202e")


def afterwork(*args: str, url: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    # src first: the checkout under test, whatever afterwork the environment installed.
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": str(columns)}
    env["AFTERWORK_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "afterwork", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def hostile_job(tmp_path: Path) -> tuple[str, str]:
    """A store holding a failed job whose every text field carries escape sequences."""
    path = tmp_path / "afterwork.db"

    async def fill() -> str:
        backend = SQLiteBackend(str(path))
        await backend.open()
        try:
            new = NewJob(
                id=new_job_id(),
                task=f"app:{HOSTILE}",
                queue=f"q{HOSTILE}",
                args=[HOSTILE],
                kwargs={"note": HOSTILE},
                key=f"k{HOSTILE}",
            )
            await backend.enqueue([new])
            (claim,) = await backend.claim("w:1:abc", queues=None, limit=1, lease_ttl=300)
            error = JobError("ValueError", f"bad {HOSTILE}", f"Traceback:\n  line {HOSTILE}\n")
            await backend.finish(claim.lease, Outcome.failed(error))
            return new.id
        finally:
            await backend.aclose()

    return f"sqlite:///{path}", asyncio.run(fill())


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "show", "{id}"],
        ["jobs", "show", "{id}", "--json"],
        ["jobs", "list"],
        ["jobs", "list", "--json"],
        ["queues"],
        ["queues", "--json"],
    ],
)
def test_escape_sequences_in_job_data_are_shown_escaped(
    hostile_job: tuple[str, str], command: list[str]
) -> None:
    url, job_id = hostile_job
    result = afterwork(*(part.replace("{id}", job_id) for part in command), url=url)
    assert result.returncode == 0, result.stderr
    for escape in ESCAPES:
        assert escape not in result.stdout, (escape, command)
        assert escape not in result.stderr, (escape, command)
    assert "\\u001b" in result.stdout
    if "--json" in command:
        data = json.loads(result.stdout)  # still valid JSON, holding the same data
        if command[:2] == ["jobs", "show"]:
            assert data["args"] == [HOSTILE] and data["error"]["traceback"].count("\n") == 2
    if command == ["jobs", "show", "{id}"]:
        assert "Traceback:\n  line " in result.stdout  # a traceback keeps its lines
