"""``afterwork worker --reload``: a code change restarts the worker, running jobs first finish."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0

APP = """
import logging
from pathlib import Path

import anyio

from afterwork import Afterwork

HERE = Path(__file__).parent
aw = Afterwork(f"sqlite:///{HERE}/afterwork.db", grace=20)


@aw.task(name="hold")
async def hold() -> str:
    logging.getLogger("afterwork.test_app").info("hold is running")
    while not (HERE / "release").exists():  # the test creates it when it wants the job done
        await anyio.sleep(0.02)
    return "released"
"""


class Lines:
    """The process's stderr, line by line, read by a thread so waits can be bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stderr is not None
        self.stream = process.stderr
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.put(line)

    def close(self) -> None:
        """After the process exited: the reader reaches the end, then the pipe is closed."""
        self.reader.join(TIMEOUT)
        self.stream.close()

    def wait_for(self, text: str) -> str:
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            self.seen.append(line)
            if text in line:
                return line


def enqueue_hold(project: Path) -> None:
    code = "import app; print(app.hold.enqueue_sync().id)"
    subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env(), check=True, timeout=TIMEOUT
    )


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def test_a_change_restarts_the_worker_after_its_running_job_finished(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    process = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", "--reload", "--grace", "20"],
        cwd=tmp_path,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(process)
    try:
        lines.wait_for("watching")
        first = lines.wait_for("started")
        enqueue_hold(tmp_path)
        lines.wait_for("hold is running")
        (tmp_path / "app.py").write_text(APP + "\n# edited\n")
        lines.wait_for("changed: app.py; restarting the worker")
        stopping = lines.wait_for("stopping: waiting up to")
        assert "1 running job(s)" in stopping
        (tmp_path / "release").touch()
        second = lines.wait_for("started")
        assert second != first
        process.send_signal(signal.SIGINT)
        lines.wait_for("stopping the worker")
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        lines.close()
    check = "import asyncio, app; print([j.status.value for j in asyncio.run(app.aw.list_jobs())])"
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    # The job was not cut short by the restart: it finished in the first worker.
    assert done.stdout.strip() == "['succeeded']", (done.stdout, done.stderr, lines.seen)
