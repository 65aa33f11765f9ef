"""Free loopback ports for the tests' private servers.

Asking the kernel for port 0 hands out a port from the ephemeral range, the same range every
outgoing connection draws its local port from. Between the moment a test closes the probe socket
and the moment its server binds, a client connection elsewhere in the suite can take that port,
and the server exits with "Address already in use" (a Redis Cluster test lost a node that way).
So the ports come from below the ephemeral range, are probed by binding, and are never handed
out twice in one test session.
"""

from __future__ import annotations

import random
import socket

__all__ = ("free_port",)

_LOW, _HIGH = 20000, 32000  # below Linux's default ephemeral range (32768-60999)
_handed: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback TCP port nobody listens on, outside the ephemeral range when possible."""
    high = min(_HIGH, _ephemeral_floor() - 1)
    for _ in range(200):
        port = random.randint(_LOW, high) if high > _LOW else 0
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _handed:
            _handed.add(port)
            return port
    raise RuntimeError("no free loopback port found")
