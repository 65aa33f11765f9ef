"""Where a worker's start-up goes, spawn -> first job done, phase by phase, per store.

Usage::

    .venv/bin/python bench/startup_phases.py [--spawns 5] [--stores sqlite,redis,postgres]
                                             [--base /path/to/other/src]

Each round, for each store (and each source tree with ``--base``), a job is enqueued, then
one worker process is spawned running what ``python -m afterwork worker app:aw`` runs
(``afterwork._cli_worker``: its logging set-up, ``load_afterwork``, ``run_worker``), with
the store's methods wrapped to note when each call starts and ends. The child prints, at
exit, the wall time since the spawn and its own CPU seconds (``time.process_time``) at:

* ``interpreter``: the script's first line (the interpreter and ``site`` are up);
* ``imports``: ``afterwork._cli_worker`` and the app module are imported (the import phase:
  its CPU is the load-independent figure);
* ``store open``: the store's ``open()`` returned (connection, schema check);
* ``first claim``: the first ``claim()`` call started / returned (what ran before it is
  the worker's set-up: the engine's modules, the worker, its tasks);
* ``job ran``: the job's code ran;
* ``done``: the job's outcome was stored (the write that made it visible).

Medians over ``--spawns`` rounds. Prints the load average before and after, and the store
calls made until the job was done in one run. ``--without-otel-sdk`` hides
``opentelemetry.sdk`` from the workers, as an install without that (dev-only) package:
redis-py 8 imports it when ``redis.asyncio`` is imported, wherever it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

APP = """
import time
from afterwork import Afterwork

aw = Afterwork({url!r})

@aw.task(name="noop")
async def noop(n: int) -> None:
    import bench_phases_marks
    bench_phases_marks.mark("job ran")
"""

MARKS = """
import time
spawned = 0.0
marks = []

def mark(name):
    marks.append((name, time.time() - spawned, time.process_time()))
"""

#: The spawned process: what ``afterwork._cli_worker.main`` runs for ``worker app:aw``,
#: with marks, and the store's methods wrapped. It imports nothing before its first mark.
CHILD = """
import os
import sys
import time

import bench_phases_marks as marks

marks.spawned = float(os.environ["STARTUP_SPAWNED"])
if os.environ.get("STARTUP_HIDE_OTEL_SDK"):
    sys.modules["opentelemetry.sdk"] = None  # as installed without the SDK (a dev extra here)
marks.mark("interpreter")

from afterwork import _cli_worker

_cli_worker.configure_logging("INFO", "plain")
aw = _cli_worker.load_afterwork(sys.argv[1])
marks.mark("imports")

import asyncio
import inspect
import json
import signal

calls = []
backend = aw.backend


def wrap(name, method):
    async def wrapped(*args, **kwargs):
        start = time.time() - marks.spawned
        if name == "claim" and not any(m[0] == "first claim call" for m in marks.marks):
            marks.mark("first claim call")
        try:
            return await method(*args, **kwargs)
        finally:
            calls.append((name, start, time.time() - marks.spawned))
            if name == "open":
                marks.mark("store open")
            elif name == "claim" and not any(m[0] == "first claim" for m in marks.marks):
                marks.mark("first claim")

    return wrapped


for name in dir(type(backend)):
    if not name.startswith("_"):
        method = getattr(backend, name, None)
        if inspect.iscoroutinefunction(method):
            setattr(backend, name, wrap(name, method))
try:
    asyncio.run(_cli_worker.run_worker(aw, concurrency=None, queues=None, grace=None, name=None))
finally:
    sys.stdout.write(json.dumps({"marks": marks.marks, "calls": calls}) + "\\n")
    sys.stdout.flush()
"""

#: The import phase alone (``--imports``): what the worker command imports before and as it
#: starts, then the process's CPU seconds so far (the interpreter's start-up included).
IMPORTS = """
import resource, sys
from afterwork import _cli_worker, _cli_lost
_cli_worker.load_afterwork("app:aw")
import afterwork._engine.worker, anyio._backends._asyncio
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime)
"""

PHASES = ("interpreter", "imports", "store open", "first claim call", "first claim", "job ran")


def compile_tree(src: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(src)], check=True, stdout=subprocess.DEVNULL
    )


def spawn(src: Path, folder: Path, hide_otel: bool) -> tuple[float, subprocess.Popen[bytes]]:
    """The child, and the time just before it was spawned."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(folder)])}
    env.pop("AFTERWORK_URL", None)
    if hide_otel:
        env["STARTUP_HIDE_OTEL_SDK"] = "1"
    spawned = time.time()
    env["STARTUP_SPAWNED"] = repr(spawned)
    proc = subprocess.Popen(
        [sys.executable, "bench_phases_child.py", "app:aw"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return spawned, proc


async def once(src: Path, url: str, folder: Path, hide_otel: bool) -> dict[str, Any]:
    from afterwork import Afterwork

    (folder / "app.py").write_text(APP.format(url=url))
    (folder / "bench_phases_marks.py").write_text(MARKS)
    (folder / "bench_phases_child.py").write_text(CHILD)
    async with Afterwork(url) as aw:

        @aw.task(name="noop")
        async def noop(n: int) -> None: ...

        job = await noop.enqueue(0)
        spawned, proc = spawn(src, folder, hide_otel)
        try:
            done = await aw.wait_for_job(job.id, timeout=60)
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
    assert done.finished_at is not None
    data: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    data["done"] = done.finished_at - spawned
    return data


def summary(label: str, samples: list[dict[str, Any]]) -> None:
    print(f"\n{label}: spawn -> first job done, median of {len(samples)}")
    print(
        "| phase ends at | wall since spawn | CPU since start | CPU in the phase"
        " | runs (wall, ms) |"
    )
    print("|---|---:|---:|---:|---|")
    previous = 0.0
    for phase in PHASES:
        walls, cpus = [], []
        for sample in samples:
            found = [m for m in sample["marks"] if m[0] == phase]
            if found:
                walls.append(found[0][1])
                cpus.append(found[0][2])
        if walls:
            cpu = statistics.median(cpus)
            runs = ", ".join(f"{w * 1000:.0f}" for w in walls)
            print(
                f"| {phase} | {statistics.median(walls) * 1000:.0f} ms | {cpu * 1000:.0f} ms"
                f" | {(cpu - previous) * 1000:.0f} ms | {runs} |"
            )
            previous = cpu
    dones = [s["done"] for s in samples]
    runs = ", ".join(f"{d * 1000:.0f}" for d in dones)
    print(f"| done (finished_at) | {statistics.median(dones) * 1000:.0f} ms | | | {runs} |")
    first = samples[len(samples) // 2]
    done_at = first["done"]
    calls = [
        f"{name} {start * 1000:.0f}-{end * 1000:.0f}"
        for name, start, end in sorted(first["calls"], key=lambda c: c[1])
        if start <= done_at
    ]
    print(f"store calls until the job was done (one run, ms): {'; '.join(calls)}")


def import_cpu(src: Path, folder: Path, hide_otel: bool) -> float:
    """One fresh process's CPU seconds to import what a worker imports (``IMPORTS``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(folder)])}
    env.pop("AFTERWORK_URL", None)
    code = IMPORTS
    if hide_otel:
        code = 'import sys; sys.modules["opentelemetry.sdk"] = None\n' + code
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, check=True
    )
    return float(out.stdout.decode().split()[-1])


def measure_imports(
    trees: dict[str, Path], stores: list[str], folder: Path, imports: int, hide_otel: bool
) -> dict[str, list[float]]:
    """``import_cpu`` ``imports`` times per tree and store, the trees taking turns."""
    cpu: dict[str, list[float]] = {}
    for round_ in range(imports):
        order = list(trees.items())
        for label, src in order if round_ % 2 == 0 else order[::-1]:
            for store in stores:
                work = folder / f"0-0-{store}"  # its app.py, from the first round
                cpu.setdefault(f"{label}, {store}", []).append(import_cpu(src, work, hide_otel))
    return cpu


def print_imports(cpu: dict[str, list[float]], imports: int) -> None:
    if not cpu:
        return
    print(f"\nThe import phase alone: a fresh process's CPU, median of {imports}")
    print("| tree, store | CPU (interpreter included) | min | max |")
    print("|---|---:|---:|---:|")
    for label, values in cpu.items():
        print(
            f"| {label} | {statistics.median(values) * 1000:.1f} ms"
            f" | {min(values) * 1000:.1f} | {max(values) * 1000:.1f} |"
        )


async def main(
    spawns: int, stores: list[str], base: Path | None, hide_otel: bool, imports: int
) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "src")]
    from tests.pg_server import PostgresServer
    from tests.redis_server import RedisServer

    trees = {"afterwork": ROOT / "src"}
    if base is not None:
        trees["afterwork (base)"] = base
    for src in trees.values():
        compile_tree(src)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as name, contextlib.ExitStack() as stack:
        folder = Path(name)
        redis = pg = None
        if "redis" in stores:
            redis = RedisServer(folder / "redis")
            redis.start()
            stack.callback(redis.stop)
        if "postgres" in stores:
            pg = PostgresServer()
            pg.start()
            stack.callback(pg.remove)
        for round_ in range(spawns):
            # The trees take turns going first: no tree always follows the other's run.
            order = list(enumerate(trees.items()))
            for number, (label, src) in order if round_ % 2 == 0 else order[::-1]:
                for store in stores:
                    work = folder / f"{round_}-{number}-{store}"
                    work.mkdir()
                    if store == "sqlite":
                        url = f"sqlite:///{work / 'jobs.db'}"
                    elif store == "redis":
                        assert redis is not None
                        url = redis.url.rsplit("/", 1)[0] + f"/{1 + round_ % 8}"
                    else:
                        assert pg is not None
                        url = pg.url
                    rows.setdefault(f"{label}, {store}", []).append(
                        await once(src, url, work, hide_otel)
                    )
        cpu = measure_imports(trees, stores, folder, imports, hide_otel)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label, samples in rows.items():
        summary(label, samples)
    print_imports(cpu, imports)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,redis,postgres")
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument(
        "--without-otel-sdk",
        action="store_true",
        help="hide opentelemetry.sdk from the workers (redis-py 8 loads it where installed)",
    )
    parser.add_argument(
        "--imports",
        type=int,
        default=0,
        help="also time the import phase alone in this many fresh processes per tree and store",
    )
    args = parser.parse_args()
    asyncio.run(
        main(args.spawns, args.stores.split(","), args.base, args.without_otel_sdk, args.imports)
    )
