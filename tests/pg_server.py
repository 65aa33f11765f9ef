"""Private PostgreSQL servers for the tests: initdb in a temporary directory, a free port.

``AFTERWORK_TEST_POSTGRES_URL`` points the tests at an existing server instead. Without the
binaries (Debian's ``postgresql`` package) the tests skip locally and fail in CI
(``CI=true``). PostgreSQL refuses to run as root: as root (CI), the server runs as the
``postgres`` user, in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from .ports import free_port

__all__ = ("PgBouncer", "PostgresServer", "postgres_bin")

_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
         "/usr/lib/postgresql/15/bin")  # fmt: skip


def postgres_bin(name: str) -> str:
    """The path of a PostgreSQL server binary (``postgres``, ``initdb``), or a skip."""
    for directory in _DIRS:
        path = Path(directory) / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (scripts/install-system-deps installs postgresql)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class PostgresServer:
    """One postgres process on 127.0.0.1.

    fsync off by default: tests need no durability across power loss. ``durable=True`` keeps
    PostgreSQL's defaults (fsync, synchronous_commit, full_page_writes on), for benchmarks.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        durable: bool = False,
        max_connections: int = 300,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.settings = dict(settings or {})  # more ``-c name=value`` server settings
        self.durable = durable
        self.max_connections = max_connections
        self.directory = Path(tempfile.mkdtemp(prefix="afterwork-pg-"))
        self.data = self.directory / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        subprocess.run(
            [postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, **self._as,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        if not self.data.exists():
            self.init()
        log = open(self.directory / "postgres.log", "ab")
        command = [
            postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.directory}",
            "-c", f"max_connections={self.max_connections}",
            "-c", "superuser_reserved_connections=0", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        if not self.durable:
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]  # fmt: skip
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **self._as)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: see {self.directory / 'postgres.log'}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError("postgres did not answer in time")

    def ready(self) -> bool:
        """Whether the server accepts a startup packet (not merely the TCP connection)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                user, db = b"user\0postgres\0", b"database\0postgres\0"
                body = (196608).to_bytes(4, "big") + user + db + b"\0"
                sock.sendall((len(body) + 4).to_bytes(4, "big") + body)
                reply = sock.recv(1)
            return reply == b"R"  # an authentication request: it takes connections
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, *, fast: bool = True) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT if fast else signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PgBouncer:
    """A private pgbouncer on 127.0.0.1 in front of ``server`` (Debian's ``pgbouncer``).

    Transaction pooling by default: a server connection is lent to a client for one
    transaction only (what breaks ``LISTEN`` and named prepared statements). Clients reach
    the database ``postgres`` as ``postgres`` without a password (trust, loopback only).
    """

    def __init__(
        self, server: PostgresServer, *, pool_mode: str = "transaction", pool_size: int = 4
    ) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            message = "pgbouncer is not installed (scripts/install-system-deps installs it)"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        self.server = server
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="afterwork-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"postgres = host=127.0.0.1 port={server.port} dbname=postgres user=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 200\nserver_reset_query =\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
            f"pidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        self._as = server._as
        if self._as:
            for path in self.directory.iterdir():
                os.chown(path, self._as["user"], self._as["group"])
            os.chown(self.directory, self._as["user"], self._as["group"])

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 15.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, str(self.directory / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._as,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: see {self.directory / 'pgbouncer.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pgbouncer did not listen in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)
