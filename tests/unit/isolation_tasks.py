"""Tasks that run in child processes for tests/unit/test_isolation.py.

They live in an importable module because an isolated attempt's child imports its task.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends

from afterwork import Afterwork, JobContext, Retry

aw = Afterwork(
    "memory://", seed=3, lease_ttl=5.0, poll_interval=0.1, kill_grace=0.5, max_jobs_per_child=3
)
FAST = Retry.fixed(0)


def greeting() -> str:
    return "hello from a dependency"


@aw.task(isolation="process")
def pid() -> int:
    return os.getpid()


@aw.task(isolation="process")
async def with_context(
    name: str, ctx: JobContext, greet: Annotated[str, Depends(greeting)]
) -> dict[str, object]:
    ctx.progress(0.5, "half way")
    return {"name": name, "job": ctx.id, "greet": greet, "pid": os.getpid()}


@aw.task(isolation="process", retries=1, backoff=FAST)
def segfault() -> None:
    ctypes.string_at(0)


@aw.task(isolation="process", retries=1, backoff=FAST)
def aborts() -> None:
    os.abort()


@aw.task(isolation="process")
def exits(code: int) -> None:
    os._exit(code)


@aw.task(isolation="process", retries=2, backoff=FAST)
def asks_retry() -> None:
    raise Retry(delay=0)


@aw.task(isolation="process", retries=3, backoff=FAST, dont_retry=(KeyError,))
def raises_key_error() -> None:
    raise KeyError("missing")


@aw.task(isolation="process", timeout=0.3)
def spins(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        pass


@aw.task(isolation="process", timeout=0.3)
def ignores_sigterm(pid_file: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(0.01)


@aw.task(isolation="process")
def sleeps(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(0.01)


@aw.task(isolation="process", max_memory_mb=100)
def hog() -> int:
    keep = []
    for _ in range(200):  # 2 GB at most, 10 MB at a time
        keep.append(bytearray(10 * 1024 * 1024))
        time.sleep(0.002)
    return len(keep)


@aw.task(isolation="process")
def unserializable() -> object:
    return object()


@aw.task
def in_process() -> int:
    return os.getpid()


@aw.task(isolation="process", timeout=30)
def timed_but_quick(n: int) -> int:
    return n + 1
