"""The Redis backend's :class:`~afterwork.backends.base.WorkerPresence` half.

Records live in one hash (``<prefix>:workers``: id → JSON) beside a sorted set of their
expiry times (``<prefix>:workers:exp``); expired ones are pruned on each announcement.
Presence is advisory, so these are plain commands, not a script.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .base import WorkerInfo

__all__ = ("PresenceMixin",)


class PresenceMixin:
    if TYPE_CHECKING:

        def _key(self, name: str) -> str: ...

        def now(self) -> float: ...

        async def _command(self, *args: Any, retry_for: float | None = None) -> Any: ...

    async def announce_worker(self, info: WorkerInfo) -> None:
        workers, expiry = self._key("workers"), self._key("workers:exp")
        gone = await self._command("ZRANGEBYSCORE", expiry, "-inf", repr(info.last_seen))
        if gone:
            await self._command("HDEL", workers, *gone)
            await self._command("ZREM", expiry, *gone)
        data = json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))
        await self._command("HSET", workers, info.id, data)
        await self._command("ZADD", expiry, repr(info.expires_at), info.id)

    async def remove_worker(self, worker_id: str) -> None:
        await self._command("HDEL", self._key("workers"), worker_id)
        await self._command("ZREM", self._key("workers:exp"), worker_id)

    async def list_workers(self) -> list[WorkerInfo]:
        live = await self._command(
            "ZRANGEBYSCORE", self._key("workers:exp"), f"({self.now()!r}", "+inf"
        )
        if not live:
            return []
        found: list[WorkerInfo] = []
        for text in await self._command("HMGET", self._key("workers"), *live):
            if text is None:
                continue
            try:
                found.append(WorkerInfo.from_dict(json.loads(text)))
            except (ValueError, TypeError, KeyError):
                continue  # a record this version cannot read: presence is advisory
        return sorted(found, key=lambda w: (w.started_at, w.id))
