"""An idle Redis worker, per job: latency, script calls, Redis commands and worker CPU, for
one or more trees, interleaved (issue 18).

    .venv/bin/python bench/redis_idle_cost.py --trees /tmp/aw-base,. --rounds 5
    .venv/bin/python bench/redis_idle_cost.py --trees /tmp/aw-base,. --rounds 5 --what c100

For each round and each tree in turn, a fresh private redis-server (no persistence), then
``--what latency``: the latency scenario of ``bench/peers/common.py`` (one worker process of
that tree at its defaults; 300 jobs enqueued one at a time 5 ms apart; the job's start
minus the time taken just before its enqueue), plus what the load cannot blur: script
calls (``EVALSHA``/``EVAL``, the enqueuer's one per job included) and Redis commands
(those inside scripts included) per job from ``INFO commandstats``, and the worker
process's CPU per job (``/proc``), all between the first job done and the last.
``--what c100``: 1,000 × 50 ms sleeps at concurrency 100, from the first start to the last
end, and from the worker's spawn (its start-up included). Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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


def _peer() -> Any:
    """afterwork through the peers' driver (``bench/peers/afterwork_bench.py``)."""
    return importlib.import_module("bench.peers.afterwork_bench").Peer()


def _script_calls(client: Any) -> tuple[int, int]:
    stats = client.info("commandstats")
    calls = sum(int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in ("evalsha", "eval"))
    return calls, sum(int(v.get("calls", 0)) for v in stats.values())


async def _latency(url: str, folder: Path, out: dict[str, float]) -> None:
    import redis

    from bench.peers import common

    peer = _peer()
    await peer.open()
    common.flushdb(url)
    path = folder / "latency.txt"
    command = peer.worker(None)
    proc = common.spawn(command, url, path, None)
    client = redis.Redis.from_url(url)
    try:
        await peer.enqueue("stamp", time.time())  # the worker is up once this one ran
        await common.wait_lines(path, 1, proc, 120)
        await asyncio.sleep(0.3)  # its wait for work begun
        cpu0, (calls0, cmds0) = common.tree_cpu(proc.pid), _script_calls(client)
        count = common.N_LATENCY
        for _ in range(count):
            await peer.enqueue("stamp", time.time())
            await asyncio.sleep(0.005)
        rows = await common.wait_lines(path, count + 1, proc, 240)
        await asyncio.sleep(0.3)  # back to waiting
        cpu1, (calls1, cmds1) = common.tree_cpu(proc.pid), _script_calls(client)
    finally:
        common.stop(proc)
        client.close()
        await peer.close()
    latencies = [(start - t0) * 1000 for t0, start in sorted(rows)[1:]]
    cuts = statistics.quantiles(latencies, n=100)
    out["latency_p50_ms"], out["latency_p99_ms"] = cuts[49], cuts[98]
    out["script_calls_per_job"] = (calls1 - calls0) / count
    out["commands_per_job"] = (cmds1 - cmds0) / count
    out["worker_cpu_us_per_job"] = (cpu1 - cpu0) / count * 1e6


async def _c100(url: str, folder: Path, out: dict[str, float]) -> None:
    from bench.peers import common

    peer = _peer()
    await peer.open()
    try:
        common.flushdb(url)
        await common.prefill(peer, "sleepy", common.N_SLEEP)
        path = folder / "c100.txt"
        spawned = time.time()
        proc = common.spawn(peer.worker(100), url, path, 100)
        try:
            rows = await common.wait_lines(path, common.N_SLEEP, proc, 240)
        finally:
            common.stop(proc)
    finally:
        await peer.close()
    out["c100_s"] = max(end for _, end in rows) - min(start for start, _ in rows)
    out["c100_with_startup_s"] = max(end for _, end in rows) - spawned


def one(url: str, what: str) -> None:
    """In a tree (cwd): measure and print one JSON line."""
    sys.path[:0] = [str(Path.cwd()), str(Path.cwd() / "src")]
    os.environ["BENCH_REDIS_URL"] = url
    folder = Path(tempfile.mkdtemp(prefix="aw-idle-"))
    out: dict[str, float] = {}
    if what in ("latency", "both"):
        asyncio.run(_latency(url, folder, out))
    if what in ("c100", "both"):
        asyncio.run(_c100(url, folder, out))
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", default=str(ROOT), help="comma-separated afterwork checkouts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--what", choices=["latency", "c100", "both"], default="latency")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure in this tree
    args = parser.parse_args()
    if args.one:
        one(args.one, args.what)
        return
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer

    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    for index in range(args.rounds):
        for tree in trees:
            with tempfile.TemporaryDirectory(prefix="aw-idle-srv-") as folder:
                server = RedisServer(Path(folder))
                server.extra = ["--appendonly", "no"]
                server.start()
                load = os.getloadavg()[0]
                try:
                    done = subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "--one", server.url,
                         "--what", args.what],
                        cwd=tree, capture_output=True, text=True, timeout=900, check=True,
                    )  # fmt: skip
                finally:
                    server.stop()
            result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
            runs[tree].append(result)
            shown = ", ".join(f"{k}={v:.2f}" for k, v in result.items())
            print(f"round {index + 1} {tree} (load {load:.2f}): {shown}", flush=True)
    for tree, results in runs.items():
        medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"median {tree}: " + ", ".join(f"{k}={v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
