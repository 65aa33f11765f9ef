"""Client CPU per Redis round trip: redis-py's command path against a bare asyncio stream.

    PYTHONPATH=src .venv/bin/python bench/redis_call_cpu.py --calls 3000 --rounds 3

Both send the same ``EVALSHA`` of a one-line script (one key, three arguments, as the
worker's scripts are called) to a private Redis (tests/redis_server.py) and wait for its
reply, one call at a time; the figure is this process's ``os.times()`` user + system CPU
per call. redis-py goes through ``Redis.execute_command`` (connection pool, retry wrapper,
observability hooks, command packing, the hiredis parser), as the Redis backend does; the
bare stream writes the packed command and reads one reply line. The difference is what the
client library costs per round trip, on top of the socket calls both make.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        server.start()
        try:
            import redis.asyncio as aioredis

            client: Any = aioredis.from_url(server.url)
            sha = await client.script_load("return 1")
            port = int(server.url.rsplit(":", 1)[1].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            parts = [b"EVALSHA", sha.encode(), b"1", b"k", b"a", b"b", b"c"]
            packed = b"*%d\r\n" % len(parts) + b"".join(
                b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
            )
            for round_ in range(args.rounds):
                start = cpu()
                for _ in range(args.calls):
                    await client.execute_command("EVALSHA", sha, 1, "k", "a", "b", "c")
                library = (cpu() - start) / args.calls * 1e6
                start = cpu()
                for _ in range(args.calls):
                    writer.write(packed)
                    await reader.readline()
                bare = (cpu() - start) / args.calls * 1e6
                print(f"round {round_ + 1}: redis-py {library:.0f} µs, bare stream {bare:.0f} µs"
                      " of client CPU per round trip")  # fmt: skip
            writer.close()
            await client.aclose()
        finally:
            server.stop()
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
