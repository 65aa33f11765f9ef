"""Worker start-up, spawn -> first job done: afterwork (SQLite, Redis, PostgreSQL) beside peers.

Usage::

    .venv/bin/python bench/startup_bench.py [--spawns 5] [--base /path/to/other/src]

Each round, interleaved: a job is enqueued, then one worker process is spawned from each
system's command line (``python -m afterwork worker app:aw`` on SQLite, on a private Redis
and on a private PostgreSQL (``--no-postgres`` leaves it out); ``dramatiq``, ``taskiq
worker`` from ``bench/.venv`` if it is there, on the same Redis). The figure is
the job's end minus the time just before the spawn; medians over ``--spawns`` rounds,
with the worker's CPU seconds (user + system, to its exit). ``--base`` adds afterwork
from another source tree (say main's ``src``) to the same rounds, for a before/after.
Prints the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.pg_server import PostgresServer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

from afterwork import Afterwork  # noqa: E402
from bench.envs import afterwork_python  # noqa: E402

APP = """
from afterwork import Afterwork

aw = Afterwork({url!r})

@aw.task(name="noop")
async def noop(n: int) -> None: ...
"""

PEERS = {"Dramatiq": "bench.peers.dramatiq_bench", "Taskiq": "bench.peers.taskiq_bench"}


def compile_tree(src: Path) -> None:
    """Byte-compile a source tree once, as an installed package is (PYTHONDONTWRITEBYTECODE
    would otherwise make every spawn compile afterwork's modules again)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(src)], check=True, stdout=subprocess.DEVNULL
    )


async def afterwork_once(src: Path, url: str, folder: Path) -> tuple[float, float]:
    (folder / "app.py").write_text(APP.format(url=url))
    async with Afterwork(url) as aw:

        @aw.task(name="noop")
        async def noop(n: int) -> None: ...

        job = await noop.enqueue(0)
        spawned = time.time()
        proc = spawn_worker(src, folder)
        try:
            done = await aw.wait_for_job(job.id, timeout=60)
        finally:
            cpu = stop_worker(proc)
        assert done.finished_at is not None
        return done.finished_at - spawned, cpu


def spawn_worker(src: Path, folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(folder)])}
    env.pop("AFTERWORK_URL", None)
    return subprocess.Popen(
        [afterwork_python(), "-m", "afterwork", "worker", "app:aw"],
        cwd=folder,
        env=env,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM, then wait for it; its CPU seconds (user + system)."""
    proc.terminate()
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def peer_once(python: Path, module: str, url: str) -> tuple[float, float]:
    result = subprocess.run(
        [str(python), "-m", "bench.peers.startup", module, url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return float(data["seconds"]), float(data["cpu"])


async def main(spawns: int, base: Path | None, postgres: bool) -> None:
    trees = {"afterwork": ROOT / "src"}
    if base is not None:
        trees["afterwork (base)"] = base
    for src in trees.values():
        compile_tree(src)
    python = ROOT / "bench" / ".venv" / "bin" / "python"
    peers = PEERS if python.exists() else {}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        server = RedisServer(folder / "redis")
        server.start()
        pg = PostgresServer() if postgres else None
        try:
            if pg is not None:
                pg.start()
            for round_ in range(spawns):
                # The trees take turns going first: no tree always follows the other's run.
                order = list(enumerate(trees.items()))
                for number, (label, src) in order if round_ % 2 == 0 else order[::-1]:
                    work = folder / f"{round_}-{number}"
                    work.mkdir()
                    sqlite_url = f"sqlite:///{work / 'jobs.db'}"
                    rows.setdefault(f"{label}, SQLite", []).append(
                        await afterwork_once(src, sqlite_url, work)
                    )
                    redis_url = server.url.rsplit("/", 1)[0] + f"/{1 + round_ % 8}"
                    rows.setdefault(f"{label}, Redis", []).append(
                        await afterwork_once(src, redis_url, work)
                    )
                    if pg is not None:
                        rows.setdefault(f"{label}, PostgreSQL", []).append(
                            await afterwork_once(src, pg.url, work)
                        )
                for label, module in peers.items():
                    rows.setdefault(f"{label}, Redis", []).append(
                        peer_once(python, module, server.url)
                    )
        finally:
            server.stop()
            if pg is not None:
                pg.remove()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| system, store | spawn -> first job done, median of {spawns} | worker CPU | runs |")
    print("|---|---:|---:|---|")
    for label, samples in rows.items():
        seconds = statistics.median(s for s, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        runs = ", ".join(f"{s:.2f}" for s, _ in samples)
        print(f"| {label} | {seconds:.3f} s | {cpu:.3f} s | {runs} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.spawns, args.base, not args.no_postgres))
