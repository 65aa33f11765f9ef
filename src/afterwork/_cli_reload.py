"""``afterwork worker --reload``: restart the worker when the code changes (development).

The worker runs as a child process in its own session, so the terminal's Ctrl-C reaches only
this supervisor, which then stops the child once, gracefully (SIGTERM: running jobs get
their grace period, then are released). On a change to a ``.py`` file under the watched
folder, the child is stopped the same way and started again. A child that exits on its own
(a target that does not load, a crash) is started again on the next change.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import typer

__all__ = ("reload_worker", "run_reloading")

logger: logging.Logger = logging.getLogger("afterwork.cli")


def _stop(child: subprocess.Popen[bytes], wait: float) -> int:
    """SIGTERM ``child``, give it ``wait`` seconds to stop gracefully, then SIGKILL it."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(wait)
        except subprocess.TimeoutExpired:
            logger.warning("the worker did not stop within %gs: killing it", wait)
            child.kill()
            child.wait()
    return child.returncode


def run_reloading(worker_args: Sequence[str], folder: Path, grace: float) -> int:
    """Run ``afterwork worker <worker_args>`` and restart it on changes under ``folder``.

    Returns the exit code of the last worker process.
    """
    from watchfiles import PythonFilter, watch

    command = [sys.executable, "-m", "afterwork", "worker", *worker_args]
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received %s: stopping the worker", signal.Signals(signum).name)
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # The worker's own grace, plus time to start and close the store.
    wait = grace + 10.0
    try:
        logger.info("watching %s for changes to .py files (--reload)", folder)
        child = subprocess.Popen(command, start_new_session=True, env=os.environ.copy())
        for changes in watch(
            folder, watch_filter=PythonFilter(), stop_event=stopping, raise_interrupt=False
        ):
            names = sorted({os.path.relpath(path, folder) for _, path in changes})
            logger.info("changed: %s; restarting the worker", ", ".join(names))
            _stop(child, wait)
            child = subprocess.Popen(command, start_new_session=True, env=os.environ.copy())
        return _stop(child, wait)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def reload_worker(
    target: str,
    concurrency: int | None,
    queues: str | None,
    grace: float | None,
    name: str | None,
    log_level: str,
) -> None:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        typer.echo("error: --reload needs the watchfiles package: pip install watchfiles", err=True)
        raise typer.Exit(2) from None
    args = [target, "--log-level", log_level]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if queues is not None:
        args += ["--queues", queues]
    if grace is not None:
        args += ["--grace", str(grace)]
    if name is not None:
        args += ["--name", name]
    code = run_reloading(args, Path(os.getcwd()), 30.0 if grace is None else grace)
    raise typer.Exit(code)
