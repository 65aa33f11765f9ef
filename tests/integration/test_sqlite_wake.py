"""Across processes on one SQLite file: an enqueue wakes an idle worker at once.

The worker here polls only every 30 s, so a job that starts within the test's bounded
wait was started by the wake-up signal (``backends/_sqlite_wake.py``), not by a poll.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus
from afterwork.backends._sqlite_wake import WakeSignals

ROOT = Path(__file__).resolve().parents[2]

APP = """
import sys
from afterwork import Afterwork

aw = Afterwork(sys.argv[-1], poll_interval=30)

@aw.task(name="ping")
async def ping(n: int) -> int:
    return n
"""

pytestmark = pytest.mark.skipif(not hasattr(__import__("socket"), "AF_UNIX"), reason="Unix")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def wait_until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_enqueue_in_one_process_wakes_a_worker_in_another(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    url = f"sqlite:///{db}?poll_interval=30&max_poll_interval=30"
    (tmp_path / "app.py").write_text(APP.replace("sys.argv[-1]", repr(url)))
    worker = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw"],
        cwd=tmp_path,
        env=env(),
        stderr=subprocess.DEVNULL,
    )
    folder = Path(f"{db}.wake")
    try:
        # The worker listens once it waits for work: its socket appears.
        wait_until(lambda: folder.is_dir() and any(folder.glob("*.sock")), timeout=30)

        async def run() -> list[float]:
            async with Afterwork(url, poll_interval=30) as aw:

                @aw.task(name="ping")
                async def ping(n: int) -> int:
                    return n

                latencies = []
                for n in range(5):
                    job = await ping.enqueue(n)
                    done = await aw.wait_for_job(job.id, timeout=10)  # < the 30 s poll
                    assert done.status is JobStatus.SUCCEEDED and done.result == n
                    assert done.started_at is not None
                    latencies.append(done.started_at - done.created_at)
                return latencies

        latencies = asyncio.run(run())
        assert max(latencies) < 10
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert not any(folder.glob("*.sock"))  # the worker removed its socket as it stopped


def test_a_dead_listener_is_removed_and_a_poke_never_fails(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    folder = Path(f"{db}.wake")
    folder.mkdir()
    stale = folder / "1-dead.sock"
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # the file stays; nobody listens: its process died
    signals = WakeSignals(str(db))
    signals.poke()
    assert not stale.exists()
    signals.poke()  # nothing left to wake: still fine
    signals.close()
    WakeSignals(str(tmp_path / "missing" / "jobs.db")).poke()  # no folder: nothing sent
