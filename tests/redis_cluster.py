"""A private Redis Cluster for the tests: 3 masters + 3 replicas on free loopback ports.

Each node is a :class:`RedisServer` with ``--cluster-enabled yes`` and a low
``cluster-node-timeout`` (so a killed master fails over in about a second);
``redis-cli --cluster create`` joins them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .redis_server import RedisServer, free_port

__all__ = ("RedisCluster",)

NODE_TIMEOUT_MS = 1000


def _command(port: int, *args: str) -> str:
    """One command to a node over a raw socket (inline protocol); the reply as text."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        sock.settimeout(2.0)
        while True:
            chunk = sock.recv(65536)
            data += chunk
            if not chunk or data.endswith(b"\r\n") and _complete(data):
                break
    return data.decode(errors="replace")


def _complete(data: bytes) -> bool:
    if data[:1] == b"$":
        header, _, rest = data.partition(b"\r\n")
        return len(rest) >= int(header[1:]) + 2 or int(header[1:]) < 0
    return True


class RedisCluster:
    """Six nodes; ``url`` is a ``redis+cluster://`` URL naming all of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []
        for i in range(6):
            port = free_port()
            node_dir = directory / f"node{i}"
            self.nodes.append(
                RedisServer(
                    node_dir,
                    port=port,
                    extra=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(NODE_TIMEOUT_MS),
                        # the bus port defaults to port + 10000, which may be taken or > 65535
                        "--cluster-port",
                        str(free_port()),
                        "--appendfsync",
                        "everysec",
                    ],
                )  # fmt: skip
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and sees three masters, and every
        replica is in sync with its master (a replica never synced cannot take over)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
            if all(
                "cluster_state:ok" in self.info(n) and "cluster_size:3" in self.info(n)
                for n in live
            ) and all(self.synced(n) for n in live):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok in time")

    def synced(self, node: RedisServer) -> bool:
        try:
            info = _command(node.port, "INFO", "replication")
        except OSError:
            return False
        return "role:master" in info or "master_link_status:up" in info

    def info(self, node: RedisServer) -> str:
        try:
            return _command(node.port, "CLUSTER", "INFO")
        except OSError:
            return ""

    def master_of(self, key: str) -> RedisServer:
        """The node that is master of ``key``'s slot now."""
        live = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        slot = int(_command(live[0].port, "CLUSTER", "KEYSLOT", key).strip()[1:])
        for node in live:
            try:
                reply = _command(node.port, "ROLE")
            except OSError:
                continue
            if "master" not in reply:
                continue
            slots = _command(node.port, "CLUSTER", "NODES")
            for line in slots.splitlines():
                fields = line.split()
                if len(fields) < 9 or "myself" not in fields[2]:
                    continue
                for spec in fields[8:]:
                    low, _, high = spec.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise RuntimeError(f"no live master serves slot {slot}")

    def wait_master(self, key: str, timeout: float = 30.0) -> RedisServer:
        """The live master of ``key``'s slot, once there is one (a replica took over)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.master_of(key)
            except (RuntimeError, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
