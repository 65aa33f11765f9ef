"""Real servers for tests: uvicorn on a free loopback port, in the test's event loop."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn


@asynccontextmanager
async def serve(app: Any, *, timeout: float = 10.0) -> AsyncIterator[str]:
    """Serve ``app`` (lifespan included) on 127.0.0.1; yield its base URL once it started.

    The socket is bound before uvicorn starts, so there is no race for the port; the
    startup (the app's lifespan) has finished when the URL is yielded, and a startup
    failure is raised here.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    try:
        async with anyio.create_task_group() as group:
            stopped = anyio.Event()

            async def run() -> None:
                try:
                    await server.serve([sock])
                finally:
                    stopped.set()

            group.start_soon(run)
            with anyio.fail_after(timeout):  # uvicorn offers a flag, not an event
                while True:
                    if server.started or stopped.is_set():
                        break
                    await anyio.sleep(0.01)
            if not server.started:
                raise RuntimeError("uvicorn stopped before it started (see its log)")
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()
