"""``afterwork worker --processes N``: N supervised worker processes from one command.

A SIGKILLed process is restarted (and the restart is logged) while jobs keep completing;
SIGTERM drains every process gracefully and the command exits 0; a target that cannot be
loaded makes it exit 2 instead of restarting forever.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from .test_worker_reload import TIMEOUT, Lines, env

APP = """
import os

from afterwork import Afterwork

aw = Afterwork("sqlite:///./afterwork.db", poll_interval=0.1, grace=10)


@aw.task(name="whoami")
def whoami(n: int) -> int:
    return os.getpid()
"""

RUN_BATCH = """
import asyncio, sys, app

async def main() -> None:
    async with app.aw:
        jobs = [await app.whoami.enqueue(n) for n in range(int(sys.argv[1]))]
        done = [await job.wait(timeout=60) for job in jobs]
        print(sorted({j.result for j in done if j.status.value == "succeeded"}), len(done),
              sum(j.status.value == "succeeded" for j in done))

asyncio.run(main())
"""


def run_batch(project: Path, count: int) -> tuple[set[int], int]:
    (project / "batch.py").write_text(RUN_BATCH)
    out = subprocess.run(
        [sys.executable, "batch.py", str(count)],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    pids, total, succeeded = out.rsplit("]", 1)[0] + "]", *out.rsplit("]", 1)[1].split()
    assert int(total) == count
    return {int(p) for p in re.findall(r"\d+", pids)}, int(succeeded)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def started_pid(line: str) -> int:
    match = re.search(r"worker process (\d) started \(pid (\d+)\)", line)
    assert match, line
    return int(match.group(2))


def test_two_processes_survive_a_sigkill_and_drain_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", "--processes", "2", "-c", "2"],
        cwd=tmp_path,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(supervisor)
    try:
        first = {started_pid(lines.wait_for("started (pid")) for _ in range(2)}
        assert len(first) == 2
        pids, succeeded = run_batch(tmp_path, 40)
        assert succeeded == 40
        assert pids <= first
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        died = lines.wait_for(f"(pid {victim}) was killed by SIGKILL")
        assert "restarting it in 0.5s" in died
        replacement = started_pid(lines.wait_for("started (pid"))
        assert replacement not in first
        assert supervisor.poll() is None
        pids, succeeded = run_batch(tmp_path, 40)
        assert succeeded == 40
        assert victim not in pids
        assert pids <= (first - {victim}) | {replacement}
        supervisor.send_signal(signal.SIGTERM)
        lines.wait_for("stopping 2 worker process(es) gracefully")
        code = supervisor.wait(TIMEOUT)
        lines.close()
        rest = []
        while not lines.lines.empty():
            rest.append(lines.lines.get())
        assert code == 0, "".join(lines.seen + rest)
        survivors = [pid for pid in (first - {victim}) | {replacement} if alive(pid)]
        assert survivors == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        lines.close()


def test_processes_that_cannot_start_make_it_exit_non_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "afterwork", "worker", "nowhere:aw", "--processes", "2"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "cannot start (exit code 2); stopping" in done.stderr


def test_processes_must_be_a_number_or_auto(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", "--processes", "many"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "--processes must be a number or 'auto', not 'many'" in done.stderr


HOLD_APP = """
import logging
from pathlib import Path

import anyio

from afterwork import Afterwork

HERE = Path(__file__).parent
aw = Afterwork(f"sqlite:///{HERE}/afterwork.db", poll_interval=0.1, grace=60)


@aw.task(name="hold")
async def hold() -> str:
    logging.getLogger("afterwork.test_app").info("hold is running")
    while not (HERE / "release").exists():
        await anyio.sleep(0.02)
    return "released"
"""


def test_a_second_signal_stops_every_process_at_once(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(HOLD_APP)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", "--processes", "2", "-c", "1"],
        cwd=tmp_path,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(supervisor)
    try:
        for _ in range(2):
            lines.wait_for("afterwork.worker: worker")
        code = "import app; print(app.hold.enqueue_sync().id)"
        job_id = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env(),
            check=True,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout.strip()
        lines.wait_for("hold is running")
        supervisor.send_signal(signal.SIGTERM)
        lines.wait_for("stopping 2 worker process(es) gracefully")
        # The idle process stops; the busy one waits for its job (grace=60).
        supervisor.send_signal(signal.SIGTERM)
        lines.wait_for("received SIGTERM again: stopping now")
        assert supervisor.wait(TIMEOUT) == 0  # well before the 60 s grace
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        lines.close()
    check = f"import asyncio, app; print(asyncio.run(app.aw.get_job({job_id!r})).status.value)"
    status = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    assert status == "queued"  # released at once, not run to the end, not lost


def test_isolation_must_be_process_or_none(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", "--isolation", "thread"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "--isolation must be 'process' or 'none', not 'thread'" in done.stderr


DRAIN_APP = """
import os
import time

from afterwork import Afterwork

aw = Afterwork("sqlite:///./afterwork.db", poll_interval=0.1, grace=10, lease_ttl=3.0,
               reaper_interval=0.5)


@aw.task(name="whoami")
def whoami(n: int) -> int:
    time.sleep(0.01)
    return os.getpid()
"""


def test_a_sigkill_while_draining_loses_no_job(tmp_path: Path) -> None:
    """One of two processes is SIGKILLed in the middle of a drain: the supervisor starts
    another, the dead one's jobs come back when their leases expire, and all 300 succeed."""
    (tmp_path / "app.py").write_text(DRAIN_APP)
    (tmp_path / "batch.py").write_text(RUN_BATCH)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", "--processes", "2", "-c", "2"],
        cwd=tmp_path,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(supervisor)
    batch = None
    try:
        first = {started_pid(lines.wait_for("started (pid")) for _ in range(2)}
        for _ in range(2):
            lines.wait_for("afterwork.worker: worker")
        batch = subprocess.Popen(
            [sys.executable, "batch.py", "300"],
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(30):  # well into the drain
            lines.wait_for("(whoami) succeeded")
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        lines.wait_for(f"(pid {victim}) was killed by SIGKILL")
        replacement = started_pid(lines.wait_for("started (pid"))
        out, _ = batch.communicate(timeout=120)
        assert batch.returncode == 0
        pids, total, succeeded = out.rsplit("]", 1)[0] + "]", *out.rsplit("]", 1)[1].split()
        assert (int(total), int(succeeded)) == (300, 300)
        ran = {int(p) for p in re.findall(r"\d+", pids)}
        assert ran <= first | {replacement}
        assert supervisor.poll() is None
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(TIMEOUT) == 0
    finally:
        for process in (batch, supervisor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        lines.close()
