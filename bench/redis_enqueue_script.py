"""The Redis server's side of one enqueue: CPU and commands per call of the enqueue script.

    .venv/bin/python bench/redis_enqueue_script.py --trees /tmp/aw-base,. [--calls 20000]

For each tree (its ``src/afterwork/backends/lua/common.lua`` + ``enqueue.lua``, joined as
the store joins them), calls the enqueue script with one new no-op job per call, pipelined
100 calls at a time, on one private redis-server without persistence. Prints, per tree,
the server's CPU per call (``/proc/<pid>/stat``, user + system: the median and the least
of ``--blocks`` blocks, trees alternated block by block, so load shifts hit each alike)
and the commands the script ran per call (``INFO commandstats``: load-independent). The
CPU includes the server's reading and answering of the call (about 3.5 µs for an empty
script on the machine of docs/benchmarks.md), the same for every tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402


def script(tree: Path) -> str:
    lua = tree / "src" / "afterwork" / "backends" / "lua"
    common = (lua / "common.lua").read_text(encoding="utf-8")
    return f"{common}\n{(lua / 'enqueue.lua').read_text(encoding='utf-8')}"


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def job(sha: str, prefix: str) -> tuple[object, ...]:
    new_id = f"{time.time_ns():020d}{uuid.uuid4().hex[:6]}"
    # ARGV: prefix, now ("": the server's TIME), MAXLEN, one job: the 12 arguments of
    # job_args (id, task, queue, args, kwargs, prio, max, key, delay, timeout, ttl,
    # headers) and "" (not debounced).
    return (sha, 1, f"{prefix}:events", prefix, "", "10000", "1", new_id, "noop", "default",
            "[1]", "{}", "0", "1", "", "0.0", "", "", "", "")  # fmt: skip


def run(url: str, trees: list[Path], calls: int, blocks: int) -> None:
    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    shas = [client.script_load(script(tree)) for tree in trees]
    cpu: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    commands: dict[int, float] = {}
    for block in range(blocks):
        for i, sha in enumerate(shas):
            prefix = f"aw{i}b{block}"
            client.config_resetstat()
            before = server_cpu(pid)
            pipe = client.pipeline(transaction=False)
            for n in range(calls):
                pipe.evalsha(*job(sha, prefix))  # type: ignore[arg-type]
                if n % 100 == 99:
                    pipe.execute()
            pipe.execute()
            cpu[i].append((server_cpu(pid) - before) / calls * 1e6)
            stats = client.info("commandstats")
            inner = sum(
                int(v["calls"])
                for k, v in stats.items()
                if k not in ("cmdstat_evalsha", "cmdstat_config|resetstat")
            )
            commands[i] = inner / calls
            client.flushall()
    load = os.getloadavg()[0]
    for i, tree in enumerate(trees):
        print(
            f"{tree}: server CPU per call median {statistics.median(cpu[i]):.1f} µs, "
            f"least {min(cpu[i]):.1f} µs; commands per call {commands[i]:.2f} (load {load:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", default=".", help="comma-separated source trees")
    parser.add_argument("--calls", type=int, default=20000, help="script calls per block")
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), extra=["--appendonly", "no"])
        server.start()
        try:
            run(server.url, trees, args.calls, args.blocks)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
