"""A loopback TCP proxy in front of Redis that counts round trips and commands, or adds delay.

Usage (stdlib only, so every bench environment can run it)::

    python bench/proxy.py --target-port 6379 [--delay-ms 1] [--stats FILE] [--names FILE]

It listens on a free port of 127.0.0.1 (printed as the first line of stdout: ``port N``),
connects each client to ``127.0.0.1:--target-port`` and never to any other host. For each
connection it counts:

* **round trips**: every time the client sends data after the server last sent it some (or
  for the first time). A command and its reply are one round trip; so is a pipeline or a
  ``MULTI``/``EXEC`` block sent in one go, however many commands it holds, and so is a
  blocking command (``BLPOP``, ``XREADGROUP ... BLOCK``) that waits for its reply. Pushes the
  server sends without being asked (pub/sub messages) are not round trips; the client's next
  request after one counts once, as any request does. A client that sends a second request
  before the first reply arrives (pipelining by several callers on one connection) is
  counted once for both: they share one wait.
* **commands**: top-level RESP arrays (or inline commands) the client sends, each one counted
  whether it travels alone or in a pipeline. ``--names FILE`` writes, on exit, how many of
  each command name were sent (``EVALSHA`` counted per script SHA prefix).

The counters live in ``--stats FILE`` (``<round trips> <commands> <bytes up> <bytes down>
<connections>``, five little-endian int64 in a memory-mapped file): another process reads
them at any moment with :func:`read_stats`, without stopping the proxy.

``--delay-ms D`` holds every chunk ``D`` ms in each direction before passing it on (in order,
without limiting how many are in flight), as a network between two hosts would: 1 ms makes
a 2 ms round trip. asyncio's timers wake on whole milliseconds (``epoll``), so the delay
added is ``D`` to ``D + 1`` ms; ``--probe`` measures the PING round trip it gives.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import mmap
import os
import signal
import socket
import struct
import time
from collections import Counter, deque
from pathlib import Path

STATS = struct.Struct("<5q")
ROUND_TRIPS, COMMANDS, BYTES_UP, BYTES_DOWN, CONNECTIONS = range(5)


class RespCounter:
    """Counts the commands in a client's RESP byte stream, fed in arbitrary chunks."""

    def __init__(self, names: Counter[str] | None = None) -> None:
        self.commands = 0
        self.names = names
        self._buf = bytearray()
        self._args = 0  # bulk strings still to come in the current array
        self._skip = 0  # bytes of a bulk string (and its CRLF) still to pass over
        self._first: list[bytes] = []  # the command's first two arguments, for --names

    def feed(self, data: bytes) -> int:
        """Consume ``data``; returns how many commands it completed."""
        before = self.commands
        buf = self._buf
        buf += data
        at = 0
        while True:
            if self._skip:  # inside a bulk string: pass over it
                take = min(self._skip, len(buf) - at)
                at += take
                self._skip -= take
                if self._skip:
                    break
                self._argument_done()
                continue
            end = buf.find(b"\r\n", at)
            if end < 0:
                break
            line = bytes(buf[at:end])
            if self._args == 0:  # between commands
                at = end + 2
                if line.startswith(b"*"):
                    self._args = max(0, int(line[1:]))
                    self._first = []
                elif line.strip():  # an inline command (redis-cli style)
                    self._first = line.split()[:2]
                    self._done()
                continue
            if not line.startswith(b"$"):
                at = end + 2  # not a request as clients send them: pass over the line
                continue
            size = int(line[1:])
            body = end + 2
            if self.names is not None and len(self._first) < 2:
                if len(buf) - body >= size + 2:  # whole: keep it (a name, a script SHA)
                    self._first.append(bytes(buf[body : body + size]))
                    at = body + size + 2
                    self._argument_done()
                    continue
                if size <= 128:
                    break  # wait for the rest of a short argument
                self._first.append(b"?")
            at = body
            self._skip = size + 2
        del buf[:at]
        return self.commands - before

    def _argument_done(self) -> None:
        self._args -= 1
        if self._args == 0:
            self._done()

    def _done(self) -> None:
        self.commands += 1
        if self.names is not None and self._first:
            name = self._first[0].decode(errors="replace").upper()
            if name == "EVALSHA" and len(self._first) > 1:
                name += " " + self._first[1][:8].decode(errors="replace")
            self.names[name] += 1
        self._first = []


class Proxy:
    """The proxy itself; ``stats`` is any writable buffer of ``STATS.size`` bytes."""

    def __init__(
        self,
        target_port: int,
        *,
        delay: float = 0.0,
        stats: mmap.mmap | bytearray | None = None,
        names: Counter[str] | None = None,
    ) -> None:
        self.target_port = target_port
        self.delay = delay
        self.stats = stats if stats is not None else bytearray(STATS.size)
        self.names = names
        self.counts = [0] * 5
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def _bump(self, index: int, by: int = 1) -> None:
        self.counts[index] += by
        STATS.pack_into(self.stats, 0, *self.counts)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        for writer in (client_w, server_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._bump(CONNECTIONS)
        answered = [True]  # the server spoke since the client last did
        resp = RespCounter(self.names)

        def upward(data: bytes) -> None:
            if answered[0]:
                answered[0] = False
                self.counts[ROUND_TRIPS] += 1
            self.counts[COMMANDS] += resp.feed(data)
            self._bump(BYTES_UP, len(data))

        def downward(data: bytes) -> None:
            answered[0] = True
            self._bump(BYTES_DOWN, len(data))

        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, upward), self._pipe(server_r, client_w, downward)
            )
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # a connection closed, or the bench is over
        finally:
            client_w.close()
            server_w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen) -> None:  # type: ignore[no-untyped-def]
        if not self.delay:
            while data := await reader.read(65536):
                seen(data)
                writer.write(data)
                await writer.drain()
            writer.close()
            return
        # Delayed: a reader stamps each chunk, a sender passes it on once it is due.
        queue: deque[tuple[float, bytes]] = collections.deque()
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def send() -> None:
            while True:
                while not queue:
                    ready.clear()
                    await ready.wait()
                due, data = queue.popleft()
                if not data:
                    writer.close()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await reader.read(65536)
                if data:
                    seen(data)
                queue.append((loop.time() + self.delay, data))
                ready.set()
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


def read_stats(path: Path) -> dict[str, int]:
    """The counters of the proxy writing ``path`` (``--stats``), now."""
    with open(path, "rb") as file:
        values = STATS.unpack(file.read(STATS.size))
    keys = ("round_trips", "commands", "bytes_up", "bytes_down", "connections")
    return dict(zip(keys, values, strict=True))


async def probe(port: int, count: int = 200) -> float:
    """Median PING round trip through 127.0.0.1:``port``, ms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n")
        times.append((time.perf_counter() - began) * 1000)
    writer.close()
    times.sort()
    return times[len(times) // 2]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added in each direction")
    parser.add_argument("--stats", type=Path, help="memory-mapped counters (see read_stats)")
    parser.add_argument("--names", type=Path, help="write the command names sent, on exit")
    parser.add_argument("--probe", action="store_true", help="print the PING round trip, ms")
    args = parser.parse_args()
    stats: mmap.mmap | None = None
    if args.stats is not None:
        fd = os.open(args.stats, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, STATS.size)
        stats = mmap.mmap(fd, STATS.size)
    names: Counter[str] | None = Counter() if args.names else None
    proxy = Proxy(args.target_port, delay=args.delay_ms / 1000, stats=stats, names=names)
    port = await proxy.start(args.port)
    print(f"port {port}", flush=True)
    if args.probe:
        direct, through = await probe(args.target_port), await probe(port)
        print(f"PING round trip: {direct:.3f} ms direct, {through:.3f} ms through", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()
    if args.names is not None and names is not None:
        args.names.write_text(json.dumps(dict(names.most_common()), indent=1))


if __name__ == "__main__":
    asyncio.run(main())
