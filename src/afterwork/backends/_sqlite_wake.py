"""Wake-up signals between the processes sharing one SQLite file.

A worker in another process learns of a new job by polling, every ``poll_interval`` at
best. With this, each process that waits for work binds a Unix datagram socket in a
folder next to the database (``<db>.wake/``); a process that commits a write making a job
due sends one byte to each socket there. The waiter's event loop wakes at once and
looks for work; the poll stays as the safety net, backed off to ``max_poll_interval``
when idle (no busy polling).

Sending never blocks and never fails the write it follows: a full socket buffer means
the waiter is already woken, a socket whose process died (connection refused) is
removed, and every other error is ignored. Where Unix sockets are unavailable (Windows,
a path too long for ``sun_path``, a read-only folder), nothing is sent or heard and the
workers poll, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

__all__ = ("WakeSignals",)

logger: logging.Logger = logging.getLogger(__name__)

_SUFFIX = ".sock"


class WakeSignals:
    """The wake-up sockets of one database file: this process's, and the others'."""

    def __init__(self, db_path: str) -> None:
        self.folder = f"{db_path}.wake"
        self._usable = hasattr(socket, "AF_UNIX") and db_path not in ("", ":memory:")
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._own: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: list[str] = []
        self._peers_seen: int | None = None  # the folder's mtime when last listed

    # -- the waiting side ----------------------------------------------------------------

    def listen(self, on_wake: Callable[[], None]) -> bool:
        """Call ``on_wake`` (on the running loop) whenever another process pokes; ``False``
        if this is not possible here (the caller polls)."""
        if self._listener is not None:
            return self._loop is asyncio.get_running_loop()
        if not self._usable:
            return False
        loop = asyncio.get_running_loop()
        path = os.path.join(self.folder, f"{os.getpid()}-{os.urandom(4).hex()}{_SUFFIX}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            sock.setblocking(False)
            sock.bind(path)
        except (OSError, ValueError) as exc:
            sock.close()
            self._usable = False
            logger.debug("no wake-up socket in %s (%s): polling", self.folder, exc)
            return False

        def readable() -> None:
            with contextlib.suppress(OSError):
                while sock.recv(64):
                    pass
            on_wake()

        loop.add_reader(sock.fileno(), readable)
        self._listener, self._own, self._loop = sock, path, loop
        return True

    def close(self) -> None:
        """Stop listening and remove this process's socket."""
        sock, self._listener = self._listener, None
        if sock is not None:
            loop, self._loop = self._loop, None
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
            sock.close()
        own, self._own = self._own, None
        if own is not None:
            with contextlib.suppress(OSError):
                os.unlink(own)
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()

    # -- the writing side ----------------------------------------------------------------

    def poke(self) -> None:
        """Wake every other process listening on this database. Never blocks or raises."""
        if not self._usable:
            return
        try:
            peers = self._list()
            if not peers:
                return
            sender = self._sender
            if sender is None:
                sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
            for path in peers:
                try:
                    sender.sendto(b"!", path)
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has a wake-up pending already
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        with contextlib.suppress(OSError):
                            os.unlink(path)  # its process is gone
                        self._peers_seen = None
        except Exception:  # never the enqueue's problem
            logger.debug("could not send a wake-up signal", exc_info=True)

    def _list(self) -> list[str]:
        try:
            seen = os.stat(self.folder).st_mtime_ns
        except OSError:
            return []
        if seen != self._peers_seen:
            self._peers = [
                os.path.join(self.folder, name)
                for name in os.listdir(self.folder)
                if name.endswith(_SUFFIX)
            ]
            self._peers_seen = seen
        own = self._own
        return [path for path in self._peers if path != own]
