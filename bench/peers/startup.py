"""One peer's worker start-up: a job enqueued, then one worker process spawned.

    bench/.venv/bin/python -m bench.peers.startup bench.peers.dramatiq_bench redis://127.0.0.1:PORT/0

Prints one JSON object: ``seconds`` from just before the spawn to the job's end (by the
job's own clock, ``common.noop_job``), and ``cpu``, the worker's user + system seconds
(from its exit, so its shutdown counts too). ``bench/startup_bench.py`` runs it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.peers import common


def stop(pid: int) -> float:
    """SIGTERM the worker's process group, wait for it; its CPU seconds (user + system)."""
    os.killpg(pid, signal.SIGTERM)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime


async def main(module_name: str, url: str) -> None:
    os.environ["BENCH_REDIS_URL"] = url
    common.flushdb(url)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.txt"
        os.environ["BENCH_OUT"] = str(out)
        module = importlib.import_module(module_name)
        peer = module.Peer()
        await peer.open()
        try:
            await peer.enqueue("noop")
            command = peer.worker(None)
            assert command is not None
            spawned = time.time()
            proc = common.spawn(command, url, out, None)
            deadline = time.monotonic() + 60
            while not (out.exists() and out.read_text().strip()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{module_name}: no job ran within 60 s")
                await asyncio.sleep(0.002)
            ended = float(out.read_text().split()[1])
            cpu = stop(proc.pid)
        finally:
            await peer.close()
    print(json.dumps({"seconds": ended - spawned, "cpu": cpu}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
