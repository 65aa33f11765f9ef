"""The Redis backend's :class:`~afterwork.backends.base.HistoryStore` half.

Each minute is one hash, ``<prefix>:history:<minute>``, whose fields are
``["task", "queue", name]`` as JSON (``name``: ``succeeded``, ``failed``, ``retried``,
``run_sum``, ``wait_sum``, and ``r<i>`` / ``w<i>`` for run and wait bucket ``i``), beside
a sorted set of the minutes, ``<prefix>:history``. A flush is one ``MULTI``/``EXEC`` of
``HINCRBY`` and ``HINCRBYFLOAT``: additive and atomic, so workers flushing the same minute
both count. It is not retried (a repeat could count twice); the worker keeps the rows for
its next flush.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import HistoryRow

if TYPE_CHECKING:
    from redis import asyncio as aioredis

__all__ = ("HistoryMixin",)


def _minute_key(prefix_key: str, minute: float) -> str:
    return f"{prefix_key}:{minute:.0f}"


class HistoryMixin:
    if TYPE_CHECKING:

        def _key(self, name: str) -> str: ...

        def _require(self) -> aioredis.Redis: ...

        async def _command(self, *args: Any, retry_for: float | None = None) -> Any: ...

    async def record_history(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return
        index = self._key("history")
        async with self._require().pipeline(transaction=True) as pipe:
            for row in rows:
                key = _minute_key(index, row.minute)
                pipe.zadd(index, {key: row.minute})

                def field(name: str, row: HistoryRow = row) -> str:
                    return json.dumps([row.task, row.queue, name], ensure_ascii=False)

                for name, count in (
                    ("succeeded", row.succeeded),
                    ("failed", row.failed),
                    ("retried", row.retried),
                ):
                    pipe.hincrby(key, field(name), count)
                pipe.hincrbyfloat(key, field("run_sum"), row.run_sum)
                pipe.hincrbyfloat(key, field("wait_sum"), row.wait_sum)
                for prefix, buckets in (("r", row.run_buckets), ("w", row.wait_buckets)):
                    for i, count in buckets.items():
                        if count:
                            pipe.hincrby(key, field(f"{prefix}{i}"), count)
            await pipe.execute()

    async def read_history(
        self,
        *,
        since: float,
        until: float,
        task: str | None = None,
        queue: str | None = None,
    ) -> list[HistoryRow]:
        index = self._key("history")
        keys = await self._command("ZRANGEBYSCORE", index, repr(float(since)), f"({until!r}")
        if not keys:
            return []
        async with self._require().pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            hashes = await pipe.execute()
        rows: list[HistoryRow] = []
        for key, fields in zip(keys, hashes, strict=True):
            minute = float(key.rsplit(":", 1)[1])
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for name, value in fields.items():
                try:
                    row_task, row_queue, what = json.loads(name)
                except (ValueError, TypeError):
                    continue  # a field this version cannot read: history is advisory
                if (task is not None and row_task != task) or (
                    queue is not None and row_queue != queue
                ):
                    continue
                found.setdefault((row_task, row_queue), {})[what] = value
            for (row_task, row_queue), values in sorted(found.items()):
                rows.append(_row(minute, row_task, row_queue, values))
        return rows

    async def purge_history(self, *, before: float) -> None:
        index = self._key("history")
        keys = await self._command("ZRANGEBYSCORE", index, "-inf", f"({before!r}")
        if keys:
            await self._command("DEL", *keys)
            await self._command("ZREM", index, *keys)


def _row(minute: float, task: str, queue: str, values: dict[str, Any]) -> HistoryRow:
    buckets: dict[str, dict[int, int]] = {"r": {}, "w": {}}
    for what, value in values.items():
        if what[:1] in buckets and what[1:].isdigit():
            buckets[what[:1]][int(what[1:])] = int(value)
    return HistoryRow(
        minute=minute,
        task=task,
        queue=queue,
        succeeded=int(values.get("succeeded", 0)),
        failed=int(values.get("failed", 0)),
        retried=int(values.get("retried", 0)),
        run_sum=float(values.get("run_sum", 0.0)),
        run_buckets=buckets["r"],
        wait_sum=float(values.get("wait_sum", 0.0)),
        wait_buckets=buckets["w"],
    )
