"""Reading the Redis backend's event stream (``XREAD BLOCK`` on its blocking pool)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..job import JobEvent, JobStatus

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ("StreamEvents", "execute")

logger: logging.Logger = logging.getLogger(__name__)


async def execute(client: aioredis.Redis, *args: Any) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


class StreamEvents:
    """Events read from the stream with ``XREAD BLOCK`` on the blocking connection pool."""

    def __init__(self, backend: RedisBackend, last_id: str) -> None:
        self._backend = backend
        self._last = last_id
        self._buffer: deque[JobEvent] = deque()
        self._done = False

    def __aiter__(self) -> StreamEvents:
        return self

    def close(self) -> None:
        self._done = True

    async def __anext__(self) -> JobEvent:
        backend = self._backend
        backoff = 0.05
        while not self._buffer:
            client = backend._blocking
            if self._done or backend._closed or client is None:
                await self.aclose()
                raise StopAsyncIteration
            try:
                reply = await execute(
                    client, "XREAD", "COUNT", 500, "BLOCK", 500, "STREAMS",
                    backend.events_key, self._last,
                )  # fmt: skip
                backoff = 0.05
            except (RedisError, OSError) as exc:
                logger.debug("event stream read failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _stream, entries in reply or ():
                for entry_id, data in entries:  # redis-py parses each entry into a dict
                    self._last = entry_id
                    event = _event(entry_id, data)
                    if event is not None:
                        self._buffer.append(event)
        return self._buffer.popleft()

    async def aclose(self) -> None:
        self._done = True
        self._backend._streams.discard(self)


def _event(entry_id: str, data: dict[str, str]) -> JobEvent | None:
    try:
        return JobEvent(
            kind=data["k"],
            job_id=data["j"],
            task=data.get("t", ""),
            queue=data.get("q", ""),
            status=JobStatus(data["s"]),
            attempts=int(data.get("a") or 0),
            at=float(data.get("at") or 0.0),
            progress=float(data["p"]) if data.get("p") else None,
            message=data.get("m") or None,
            id=entry_id,
        )
    except (KeyError, ValueError):
        logger.warning("skipping a malformed event %s in the stream", entry_id)
        return None
