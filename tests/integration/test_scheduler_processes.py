"""T-CRON3 (short): three scheduler processes on one store enqueue each tick exactly once.

Each process is a real ``afterwork worker`` running ``tests.integration.sched_app`` (a
1-second ``every`` schedule) and claiming from an unused queue, so tick jobs stay queued
and can be counted. One process is SIGKILLed mid-run; the survivors must neither lose
nor double a tick. The same through one ``afterwork worker --processes 3`` command, whose
supervisor replaces the killed process. The in-process variant for the memory store (which
cannot be shared between processes) is ``tests/unit/test_scheduler.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from afterwork import Afterwork

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.sched_app:aw"

#: Backends the process test runs on (memory cannot be shared between processes).
PROCESS_BACKENDS = ["sqlite", "redis", "postgres"]


@pytest.fixture(params=PROCESS_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = str(request.param)
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'afterwork.db'}"
    if name == "postgres":  # the session's private postgres, a schema of its own
        return f"{request.getfixturevalue('postgres_url')}?schema=s{uuid.uuid4().hex[:12]}"
    url = str(request.getfixturevalue("redis_url"))  # the session's private redis-server
    return f"{url}?prefix=afterwork:sched{uuid.uuid4().hex[:12]}"


def _start_scheduler(url: str, log: Path, *options: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AFTERWORK_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "afterwork", "worker", APP, "--queues", "unused", *options],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _wait_tick(aw: Afterwork, at_least: float, timeout: float) -> float:
    """Poll the store until the heartbeat schedule's last tick reaches ``at_least``."""
    with anyio.fail_after(timeout):
        while True:
            last = await aw.backend.last_tick("heartbeat")
            if last is not None and last >= at_least:
                return last
            await anyio.sleep(0.2)


def _tick_of_key(key: str | None) -> float:
    assert key is not None and key.startswith("heartbeat@")
    return datetime.fromisoformat(key.partition("@")[2]).timestamp()


async def test_three_processes_enqueue_each_tick_once(store_url: str, tmp_path: Path) -> None:
    log = tmp_path / "schedulers.log"
    procs = [_start_scheduler(store_url, log) for _ in range(3)]
    aw = Afterwork(store_url)
    try:
        async with aw:
            first = await _wait_tick(aw, 0, timeout=30)
            await _wait_tick(aw, first + 3, timeout=15)
            os.killpg(procs[0].pid, signal.SIGKILL)  # mid-run, no goodbye
            procs[0].wait(timeout=10)
            await _wait_tick(aw, first + 8, timeout=20)
            for proc in procs[1:]:
                proc.send_signal(signal.SIGTERM)
            for proc in procs[1:]:
                assert proc.wait(timeout=30) == 0, log.read_text()
            jobs = await aw.list_jobs(task="tests.integration.sched_app:heartbeat", limit=1000)
            last = await aw.backend.last_tick("heartbeat")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert last is not None
    per_tick = Counter(_tick_of_key(job.key) for job in jobs)
    doubled = {tick: n for tick, n in per_tick.items() if n > 1}
    assert not doubled, f"ticks enqueued more than once: {doubled}"
    window = [first + i for i in range(int(last - first) + 1)]
    missing = [tick for tick in window if tick not in per_tick]
    assert not missing, f"ticks lost: {missing}\n{log.read_text()}"
    assert len(window) >= 9


def _child_pids(log: Path) -> list[int]:
    """The worker processes ``--processes`` started, from its log, in order."""
    return [
        int(pid) for pid in re.findall(r"worker process \d+ started \(pid (\d+)\)", log.read_text())
    ]


async def _wait_children(log: Path, count: int, timeout: float) -> list[int]:
    with anyio.fail_after(timeout):
        while True:
            pids = _child_pids(log)
            if len(pids) >= count:
                return pids
            await anyio.sleep(0.1)


@pytest.mark.fleet
async def test_processes_flag_ticks_each_schedule_once(store_url: str, tmp_path: Path) -> None:
    """``afterwork worker --processes 3``: three schedulers in one command, and one of them
    SIGKILLed (the supervisor starts another): every 1-second tick is enqueued exactly once.

    A fake clock cannot cross processes, so the run is bounded by the ticks the store has
    seen, not by sleeping.
    """
    log = tmp_path / "supervisor.log"
    supervisor = _start_scheduler(store_url, log, "--processes", "3")
    aw = Afterwork(store_url)
    try:
        async with aw:
            first = await _wait_tick(aw, 0, timeout=30)
            children = await _wait_children(log, 3, timeout=10)
            await _wait_tick(aw, first + 3, timeout=15)
            os.kill(children[0], signal.SIGKILL)  # one scheduler dies mid-run, no goodbye
            await _wait_children(log, 4, timeout=15)  # ... and the supervisor replaces it
            await _wait_tick(aw, first + 8, timeout=20)
            assert supervisor.poll() is None, log.read_text()
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=30) == 0, log.read_text()
            jobs = await aw.list_jobs(task="tests.integration.sched_app:heartbeat", limit=1000)
            last = await aw.backend.last_tick("heartbeat")
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(timeout=10)
    assert "was killed by SIGKILL" in log.read_text()
    assert last is not None
    per_tick = Counter(_tick_of_key(job.key) for job in jobs)
    doubled = {tick: n for tick, n in per_tick.items() if n > 1}
    assert not doubled, f"ticks enqueued more than once: {doubled}"
    window = [first + i for i in range(int(last - first) + 1)]
    missing = [tick for tick in window if tick not in per_tick]
    assert not missing, f"ticks lost: {missing}\n{log.read_text()}"
    assert len(window) >= 9
    assert sum(per_tick[tick] for tick in window) == len(window)
