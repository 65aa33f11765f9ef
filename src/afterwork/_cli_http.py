"""A tiny HTTP/1.0 server for the worker's side ports (``--metrics-port``).

It answers ``GET`` on a few fixed paths from the worker's own event loop: no thread, no
framework, nothing the worker does not already load. Every request gets one response and
the connection is closed. Requests are bounded (8 KiB of headers, 5 s to send them), so a
slow or hostile client cannot hold the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

__all__ = ("Handler", "serve_http")

logger: logging.Logger = logging.getLogger("afterwork.cli")

#: A route: returns the status code, the content type and the body.
Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
_MAX_HEAD = 8 * 1024
_HEAD_TIMEOUT = 5.0


async def serve_http(routes: Mapping[str, Handler], host: str, port: int) -> asyncio.Server:
    """Start serving ``routes`` on ``host:port`` (0: any free port); close the server to stop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, kind, body = await _respond(reader, routes)
            head = (
                f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=_MAX_HEAD)


async def _respond(
    reader: asyncio.StreamReader, routes: Mapping[str, Handler]
) -> tuple[int, str, bytes]:
    async with asyncio.timeout(_HEAD_TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = request_line.partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    handler = routes.get(path)
    if handler is None:
        return 404, "text/plain; charset=utf-8", b"not found\n"
    if method != "GET":
        return 405, "text/plain; charset=utf-8", b"only GET\n"
    try:
        return await handler()
    except Exception:
        logger.warning("the handler of %s failed", path, exc_info=True)
        return 500, "text/plain; charset=utf-8", b"error\n"
