"""Private redis-server processes for the tests: a free loopback port, a throwaway dir.

``AFTERWORK_TEST_REDIS_URL`` points the tests at an existing server instead. Without a
``redis-server`` binary the tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .ports import free_port

__all__ = ("RedisServer", "free_port", "redis_binary")


def redis_binary() -> str:
    """The ``redis-server`` binary, or a skip (a failure in CI)."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (scripts/install-system-deps installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """One redis-server with AOF (``appendfsync always``), started and stopped by pid."""

    def __init__(self, directory: Path, *, port: int | None = None, extra: list[str] = ()) -> None:  # type: ignore[assignment]
        self.directory = directory
        self.port = port or free_port()
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        command = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--maxmemory-policy", "noeviction",
            *self.extra,
        ]  # fmt: skip
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.directory / 'redis.log'}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer in time")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
            return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (what a crash looks like) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
