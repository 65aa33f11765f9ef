"""Which Python runs afterwork's side of a benchmark beside its peers."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def afterwork_python() -> str:
    """The Python that runs afterwork's side: the peers' environment ``bench/.venv`` when
    afterwork is installed in it (``pip install -e '.[redis]'``: the same redis-py, hiredis
    and packages as Taskiq's and Dramatiq's workers), else this one.

    The project's own environment also holds the OpenTelemetry SDK (for the tracing tests),
    which redis-py imports at start-up when it is there: tens of milliseconds that a worker
    in the peers' environment does not pay.
    """
    peers = ROOT / "bench" / ".venv" / "bin" / "python"
    if peers.exists():
        found = subprocess.run(
            [str(peers), "-c", "import afterwork, redis"], capture_output=True, check=False
        )
        if found.returncode == 0:
            return str(peers)
    return sys.executable
