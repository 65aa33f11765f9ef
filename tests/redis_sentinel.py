"""A private Redis master, one replica and one Sentinel watching them, on loopback ports."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from .redis_cluster import _command
from .redis_server import RedisServer, free_port, redis_binary

__all__ = ("RedisSentinel",)

SERVICE = "mymaster"


class RedisSentinel:
    """``url`` names the Sentinel; :meth:`master_port` asks it where the master is now."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.master = RedisServer(directory / "master", extra=["--appendfsync", "everysec"])
        self.replica = RedisServer(
            directory / "replica",
            extra=["--appendfsync", "everysec", "--replicaof", "127.0.0.1", str(self.master.port)],
        )
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{SERVICE}"

    def start(self, timeout: float = 20.0) -> None:
        self.master.start()
        self.replica.start()
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        log = open(self.directory / "sentinel.log", "ab")
        self.process = subprocess.Popen(
            [redis_binary(), str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-sentinel exited: see {self.directory}/sentinel.log")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError("the Sentinel did not see the master and its replica in time")

    def ready(self) -> bool:
        try:
            replica = _command(self.replica.port, "INFO", "replication")
            known = _command(self.port, "SENTINEL", "REPLICAS", SERVICE)
        except OSError:
            return False
        return "master_link_status:up" in replica and str(self.replica.port) in known

    def master_port(self) -> int | None:
        try:
            reply = _sentinel_addr(self.port)
        except OSError:
            return None
        return reply

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.replica.stop()
        self.master.stop()


def _sentinel_addr(port: int) -> int | None:
    """The master's port by ``SENTINEL GET-MASTER-ADDR-BY-NAME`` (a two-element array)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(f"SENTINEL GET-MASTER-ADDR-BY-NAME {SERVICE}\r\n".encode())
        data = b""
        while data.count(b"\r\n") < 5:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"*-1"):
                return None
    lines = data.split(b"\r\n")
    return int(lines[4])
