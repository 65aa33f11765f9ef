"""The benchmark's counting proxy (bench/proxy.py) counts what docs/benchmarks.md says it does.

A round trip: the client sends after the server last replied (a pipeline is one); a
command: each RESP array the client sends. Against the session's private redis-server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from bench.proxy import STATS, Proxy, RespCounter

pytestmark = pytest.mark.anyio


def resp(*args: str | bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg if isinstance(arg, bytes) else arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def test_commands_are_counted_however_the_stream_is_cut() -> None:
    stream = (
        resp("SET", "k", "v" * 5000)  # a long argument, cut across chunks
        + resp("EVALSHA", "0123456789abcdef", "0")
        + resp("LPUSH", "q", b"\r\n*3\r\n$1\r\n")  # RESP framing inside an argument
        + b"PING\r\n"  # an inline command
    ) * 20
    rng = random.Random(7)
    for _ in range(30):
        names: Counter[str] = Counter()
        counter = RespCounter(names)
        at = total = 0
        while at < len(stream):
            step = rng.randint(1, 700)
            total += counter.feed(stream[at : at + step])
            at += step
        assert total == counter.commands == 80
        assert names == {"SET": 20, "EVALSHA 01234567": 20, "LPUSH": 20, "PING": 20}


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def counted(proxy: Proxy) -> tuple[int, int]:
    trips, commands, *_ = STATS.unpack(bytes(proxy.stats))
    return trips, commands


async def exchange(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, *sends: bytes, replies: int
) -> None:
    """Send each of ``sends`` as its own write, then read ``replies`` one-line replies."""
    for data in sends:
        writer.write(data)
        await writer.drain()
    for _ in range(replies):
        await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)


async def test_round_trips_and_commands_at_the_socket(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        await exchange(writer, reader, resp("PING"), replies=1)
        assert counted(proxy) == (1, 1)
        # A pipeline in one write: one round trip, three commands.
        await exchange(
            writer, reader, resp("SET", "bp:a", "1") + resp("INCR", "bp:a") * 2, replies=3
        )
        assert counted(proxy) == (2, 4)
        # MULTI ... EXEC sent together: one round trip, four commands.
        block = resp("MULTI") + resp("INCR", "bp:a") + resp("INCR", "bp:a") + resp("EXEC")
        await exchange(writer, reader, block, replies=1 + 2 + 3)  # +OK, 2 × +QUEUED, *2 :n :n
        assert counted(proxy) == (3, 8)
        # One command written in two pieces before its reply: still one round trip.
        whole = resp("GET", "bp:a")
        await exchange(writer, reader, whole[:7], whole[7:], replies=2)  # $1 and its value
        assert counted(proxy) == (4, 9)
    finally:
        writer.close()


async def test_a_client_pipeline_is_one_round_trip(proxy: Proxy) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    try:
        await client.ping()  # the connection's set-up (HELLO, CLIENT SETINFO) and a PING
        trips, commands = counted(proxy)
        async with client.pipeline(transaction=False) as pipe:
            for n in range(10):
                pipe.set(f"bp:p{n}", n)
            await pipe.execute()
        assert counted(proxy) == (trips + 1, commands + 10)
        await client.get("bp:p1")
        assert counted(proxy) == (trips + 2, commands + 11)
    finally:
        await client.aclose()


async def test_the_delay_is_added_each_way(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port, delay=0.005)
    await proxy.start()
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    try:
        await client.ping()
        began = time.perf_counter()
        for _ in range(5):
            await client.ping()
        assert (time.perf_counter() - began) / 5 >= 0.010  # 5 ms up, 5 ms down
    finally:
        await client.aclose()
        await proxy.stop()
