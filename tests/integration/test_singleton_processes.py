"""``@aw.service(singleton=True)`` across real processes: at most one runs it at a time.

Three ``afterwork worker`` processes run ``tests.integration.singleton_app`` on one store.
The singleton writes a ledger line (pid, time) when it starts and stops. The holder is
SIGKILLed: another process must take over within the lease; the next holder is stopped
gracefully: it releases the lease and a third process takes over at once. From the ledger
(and the kill times), no two processes ever ran it at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from afterwork import Afterwork
from afterwork.backends.base import Leases

from ..waiting import eventually
from .singleton_app import LEASE

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.singleton_app:aw"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'afterwork.db'}"
    url = str(request.getfixturevalue("redis_url"))  # the session's private redis-server
    return f"{url}?prefix=afterwork:single{uuid.uuid4().hex[:12]}"


def start(url: str, ledger: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AFTERWORK_URL": url,
        "SINGLETON_LEDGER": str(ledger),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "afterwork", "worker", APP, "--queues", "unused"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def read(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    lines = ledger.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


async def started_by_other(ledger: Path, known: int, timeout: float, log: Path) -> int:
    """Wait for a ``start`` after the first ``known`` ledger lines; its pid."""
    with anyio.move_on_after(timeout):
        while True:
            starts = [e for e in read(ledger)[known:] if e["ev"] == "start"]
            if starts:
                return int(starts[0]["pid"])
            await anyio.sleep(0.05)
    raise AssertionError(f"nobody took the singleton over in {timeout}s:\n{logged(log)}")


def logged(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def intervals(ledger: Path, killed: dict[int, float]) -> list[tuple[float, float, int]]:
    """Each run as (start, end, pid); a killed holder's run ends when it was killed."""
    runs: list[tuple[float, float, int]] = []
    open_runs: dict[int, float] = {}
    for entry in read(ledger):
        pid, at = int(entry["pid"]), float(entry["t"])
        if entry["ev"] == "start":
            assert pid not in open_runs
            open_runs[pid] = at
        else:
            runs.append((open_runs.pop(pid), at, pid))
    for pid, began in open_runs.items():
        runs.append((began, killed.get(pid, float("inf")), pid))
    return sorted(runs)


async def holder_pid(aw: Afterwork) -> int | None:
    store = aw.backend
    assert isinstance(store, Leases)
    leases = [lease for lease in await store.list_leases() if lease.name == "service:leader"]
    return int(json.loads(leases[0].holder)["pid"]) if leases else None


async def test_one_holder_at_a_time_and_takeover_within_the_lease(
    store_url: str, tmp_path: Path
) -> None:
    ledger, log = tmp_path / "ledger.jsonl", tmp_path / "workers.log"
    procs = {p.pid: p for p in (start(store_url, ledger, log) for _ in range(3))}
    killed: dict[int, float] = {}
    aw = Afterwork(store_url)
    await aw.open()
    try:
        first = await started_by_other(ledger, 0, 60, log)  # the slowest start on 2 cores
        assert first in procs
        assert await holder_pid(aw) == first

        # The holder dies without a word: a standby process takes over within the lease.
        known = len(read(ledger))
        os.kill(first, signal.SIGKILL)
        killed[first] = time.time()
        procs.pop(first).wait(timeout=10)
        second = await started_by_other(ledger, known, LEASE * 1.2 + 10, log)
        took = float(read(ledger)[known]["t"]) - killed[first]
        assert second != first and second in procs
        # Within the lease and one standby poll; the slack is scheduling on a loaded box.
        assert took < LEASE * 1.2 + 2.0, took
        assert await holder_pid(aw) == second

        # The instance list (what GET /services and the dashboard show) names the holder
        # once the dead process's presence expired.
        async def listed() -> bool:
            found = [i.pid for i in await aw.service_instances() if i.service == "leader"]
            return found == [second]

        await eventually(listed, timeout=15, interval=0.1)

        # A graceful stop releases the lease at once: the last process takes over within
        # a standby poll, not a whole lease.
        known = len(read(ledger))
        stopped = time.time()
        procs[second].send_signal(signal.SIGTERM)
        third = await started_by_other(ledger, known, 15, log)
        assert third not in (first, second) and third in procs
        (handed,) = [e for e in read(ledger)[known:] if e["ev"] == "start"]
        took = float(handed["t"]) - stopped
        assert took < LEASE / 5 + 2.0, took
        assert procs.pop(second).wait(timeout=15) == 0
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await aw.aclose()

    runs = intervals(ledger, killed)
    assert [pid for _, _, pid in runs] == [first, second, third]
    for (_, end, pid), (begin, _, next_pid) in zip(runs, runs[1:], strict=False):
        assert end <= begin, f"{pid} still ran when {next_pid} started: {runs}"
    assert all(end != float("inf") for _, end, _ in runs)  # the last one stopped cleanly
