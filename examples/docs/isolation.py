from __future__ import annotations

import ctypes

from afterwork import Afterwork

aw = Afterwork("memory://", max_jobs_per_child=200, kill_grace=2.0)


@aw.task(isolation="process", timeout=30, max_memory_mb=512, retries=2)
def render_thumbnail(path: str) -> str:
    # Native code (an image library, a PDF renderer) that may crash, hang or leak memory.
    return path.replace(".png", ".thumb.png")


@aw.task(isolation="process")
def crash() -> None:
    ctypes.string_at(0)  # a segfault: it ends this job's child, never the worker
