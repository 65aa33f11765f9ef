"""Reading the Redis backend's event stream (``XREAD BLOCK`` on its blocking pool).

Resuming after an id: one script reads, in one atomic step, the stream's bounds and the first
entries after the id (``XRANGE (id +``); then ``XREAD`` carries on from the last one read. The
stream is capped (``XADD MAXLEN ~``, oldest entries trimmed first), so if the id is older
than the first entry kept and entries were ever trimmed, some after it may be gone: the
reader gets a ``truncated`` marker rather than a silent gap. (That is conservative: when the
id was exactly the last entry trimmed, nothing was lost but the marker still comes.)
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ..job import JobEvent, JobStatus
from .base import truncated_event

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ("StreamEvents", "execute")

logger: logging.Logger = logging.getLogger(__name__)

_STREAM_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_RESUME_BATCH = 500
_MAX_PART = 2**64 - 1  # each half of a stream id is an unsigned 64-bit integer

# KEYS[1] = the stream, ARGV[1] = the id to resume after. Returns the stream's first id
# ("" when empty), its last generated id ("" when missing), how many entries were ever
# added and how many are kept ("" on a Redis without those counters), then the entries.
_RESUME = """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return {'', '', '', '', {}} end
local info = redis.call('XINFO', 'STREAM', key)
local fields = {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
local first_id = ''
if #first > 0 then first_id = first[1][1] end
local added = fields['entries-added'] or ''
local entries = redis.call('XRANGE', key, '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {first_id, fields['last-generated-id'], tostring(added), tostring(fields['length']),
  entries}
"""


def parse_id(value: str) -> tuple[int, int] | None:
    """A stream id as a sortable pair, or ``None`` if ``value`` is not one."""
    match = _STREAM_ID.fullmatch(value)
    if match is None:
        return None
    pair = int(match[1]), int(match[2] or 0)
    return pair if max(pair) <= _MAX_PART else None


async def execute(client: Any, *args: Any) -> Any:
    """One raw command on ``client`` (``redis.asyncio.Redis`` or ``RedisCluster``)."""
    return await client.execute_command(*args)


class StreamEvents:
    """Events read from the stream with ``XREAD BLOCK`` on the blocking connection pool."""

    def __init__(self, backend: RedisBackend, last_id: str, since: str | None = None) -> None:
        self._backend = backend
        self._last = last_id
        self._since = since
        self._buffer: deque[JobEvent] = deque()
        self._done = False
        self._seq: int | None = None  # the sequence number of the last entry read

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
                if self._since is not None:
                    await self._resume(client, self._since)
                    self._since = None
                    continue
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
                    self._take(entry_id, data)
        return self._buffer.popleft()

    def _take(self, entry_id: str, data: dict[str, str]) -> None:
        """Buffer one entry, after a truncated marker if entries before it were trimmed."""
        seq = _seq(data)
        if seq is not None:
            if self._seq is not None and seq > self._seq + 1:
                self._buffer.append(truncated_event(self._last, self._backend.now()))
            self._seq = seq
        self._last = entry_id
        event = _event(entry_id, data)
        if event is not None:
            self._buffer.append(event)

    async def _resume(self, client: Any, since: str) -> None:
        """Start after ``since``: buffer what follows it, or the truncated marker."""
        after = parse_id(since)
        start = f"{after[0]}-{after[1]}" if after is not None else "0-0"
        first, last, added, length, entries = await execute(
            client, "EVAL", _RESUME, 1, self._backend.events_key, start, _RESUME_BATCH
        )
        newest = parse_id(last) if last else None
        oldest = parse_id(first) if first else newest
        trimmed = not (added and length) or int(added) > int(length)
        if (
            after is None
            or newest is None
            or after > newest
            or (trimmed and oldest is not None and after < oldest)
        ):
            self._buffer.append(truncated_event(since, self._backend.now()))
            if last:
                self._last = last  # live from here: the reader reloads what came before
            return
        self._last = start
        for entry_id, fields in entries:
            self._take(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))

    async def aclose(self) -> None:
        self._done = True
        self._backend._streams.discard(self)


def _seq(data: dict[str, str]) -> int | None:
    try:
        return int(data["n"])
    except (KeyError, ValueError):
        return None  # written before events were numbered


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
