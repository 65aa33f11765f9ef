"""``afterwork worker --processes N``: one command, N worker processes, supervised.

Each process is a plain ``afterwork worker`` (a fresh interpreter running the same command
without ``--processes``), so it has everything one worker has: its own event loop, store
connection, scheduler (ticks stay exactly-once: the store decides which process enqueues a
tick) and services. The supervisor only starts, watches and stops them:

- one that dies is started again after a backoff (0.5 s, doubling to 30 s; back to 0.5 s
  once a process lived 30 s), and the death is logged;
- the first SIGTERM/SIGINT is passed on to every process (a graceful drain), a second one
  too (each stops at once); the supervisor exits once all of them have, 0 if all stopped
  cleanly;
- it exits non-zero if they cannot start: at once with 2 when one says its target or its
  options are wrong, with 1 after five processes in a row died within 5 s of starting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

__all__ = ("metrics_ports", "processes_count", "run_processes")

logger: logging.Logger = logging.getLogger("afterwork.cli")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 30.0
"""A process that lived this long resets its slot's backoff."""
EARLY_DEATH = 5.0
MAX_EARLY_DEATHS = 5
"""Consecutive deaths within ``EARLY_DEATH`` of a start after which the supervisor gives up."""
POLL = 0.05


def processes_count(value: str) -> int:
    """``--processes``: a positive number, or ``auto`` (one per core)."""
    if value == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--processes must be a number or 'auto', not {value!r}") from None
    if count < 1:
        raise ValueError("--processes must be at least 1")
    return count


def metrics_ports(port: int | None, host: str, count: int = 1) -> Callable[[int], list[str]] | None:
    """``--metrics-port PORT`` with ``--processes N``: process ``i`` serves its own metrics
    on ``PORT + i`` (any free port for each when ``PORT`` is 0).

    Each process counts the jobs it ran, so each is a scrape target of its own and queries
    ``sum()`` across them, as Prometheus does for every multi-process server.
    """
    if port is None:
        return None
    if port and port + count - 1 > 65535:
        raise ValueError(f"--metrics-port {port} with {count} processes goes past port 65535")

    def args(index: int) -> list[str]:
        return ["--metrics-port", str(port + index if port else 0), "--metrics-host", host]

    return args


def _die_with_supervisor() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: a worker process gets SIGTERM (a graceful drain) if the supervisor dies."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None


class _Supervisor:
    def __init__(
        self,
        worker_args: list[str],
        count: int,
        slot_args: Callable[[int], list[str]] | None = None,
    ) -> None:
        self.command = [sys.executable, "-m", "afterwork", "worker", *worker_args]
        self.slot_args = slot_args
        self.slots = [_Slot(index) for index in range(count)]
        self.received = 0
        self.pending: list[int] = []
        self.early_deaths = 0
        self.code = 0

    def on_signal(self, signum: int, frame: FrameType | None = None) -> None:
        """The signal handler only notes the signal; the main loop passes it on, in order.

        Passing it on here would race: a second signal runs this handler again in the middle
        of the first, and both would pass on the second's signal.
        """
        self.pending.append(signum)

    def pass_on(self) -> None:
        """Pass each signal noted since the last call on to every running process."""
        while self.pending:
            self.stop(self.pending.pop(0))

    def stop(self, signum: int) -> None:
        """Stop every process: gracefully the first time, at once after that."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            logger.info(
                "received %s: stopping %d worker process(es) gracefully (send it again to "
                "stop at once)",
                name,
                len(self.slots),
            )
        else:
            logger.warning("received %s again: stopping now", name)
        # The second is passed on as another signal: two SIGTERMs that reach a process before
        # it handled the first merge into one (standard signals do not queue), and the
        # process would stop gracefully instead of at once.
        passed = signal.SIGTERM if self.received == 1 else signal.SIGINT
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(passed)

    def start(self, slot: _Slot) -> None:
        # Their own process group: the terminal's Ctrl-C reaches the supervisor only, which
        # passes it on once (a second one would stop them at once).
        command = self.command + (self.slot_args(slot.index) if self.slot_args else [])
        process = subprocess.Popen(command, process_group=0, preexec_fn=_die_with_supervisor)
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        logger.info(
            "worker process %d started (pid %d)",
            slot.index,
            process.pid,
            extra={"action": "worker_process_started", "pid": process.pid},
        )

    def ended(self, slot: _Slot, process: subprocess.Popen[bytes], returncode: int) -> None:
        """``slot``'s process ended: restart it later, or stop everything."""
        now = time.monotonic()
        slot.process = None
        lived = now - slot.started_at
        if self.received:
            # -SIGTERM: it was still starting (no handler yet, so no jobs) when we stopped it.
            if returncode not in (0, -signal.SIGTERM) and not self.code:
                self.code = 2 if returncode == 2 else 1
            return
        if returncode == 2:
            logger.error("worker process %d cannot start (exit code 2); stopping", slot.index)
            self.code = 2
            self.stop(signal.SIGTERM)
            return
        self.early_deaths = self.early_deaths + 1 if lived < EARLY_DEATH else 0
        if self.early_deaths >= MAX_EARLY_DEATHS:
            logger.error(
                "%d worker processes in a row died within %gs of starting; giving up",
                self.early_deaths,
                EARLY_DEATH,
            )
            self.code = 1
            self.stop(signal.SIGTERM)
            return
        if lived >= HEALTHY_AFTER:
            slot.backoff = FIRST_BACKOFF
        died = (
            f"was killed by {signal.Signals(-returncode).name}"
            if returncode < 0
            else f"exited with code {returncode}"
        )
        logger.warning(
            "worker process %d (pid %d) %s after %.1fs; restarting it in %.1fs",
            slot.index,
            process.pid,
            died,
            lived,
            slot.backoff,
            extra={"action": "worker_process_died", "pid": process.pid},
        )
        slot.restart_at = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)

    def step(self) -> int:
        """Reap, restart; how many processes run now."""
        running = 0
        for slot in self.slots:
            process = slot.process
            if process is not None:
                returncode = process.poll()
                if returncode is None:
                    running += 1
                else:
                    self.ended(slot, process, returncode)
            elif (
                slot.restart_at is not None
                and not self.received
                and time.monotonic() >= slot.restart_at
            ):
                self.start(slot)
                running += 1
        return running

    def kill_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()


def run_processes(
    worker_args: list[str],
    count: int,
    slot_args: Callable[[int], list[str]] | None = None,
) -> int:
    """Run ``count`` ``afterwork worker <worker_args>`` processes until stopped; the exit code.

    ``slot_args(i)`` adds arguments of the ``i``-th process (0-based; a restarted process
    gets its slot's again), such as its own ``--metrics-port``.
    """
    supervisor = _Supervisor(worker_args, count, slot_args)
    previous = {s: signal.signal(s, supervisor.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        logger.info("starting %d worker processes", count)
        for slot in supervisor.slots:
            supervisor.start(slot)
        while True:
            supervisor.pass_on()
            running = supervisor.step()
            if supervisor.received and running == 0:
                return supervisor.code
            time.sleep(POLL)
    finally:
        supervisor.kill_all()  # only after an error of the supervisor itself
        for signum, handler in previous.items():
            signal.signal(signum, handler)
