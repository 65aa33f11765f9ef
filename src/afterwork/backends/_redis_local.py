"""The Redis store's write-behind of plain callables' jobs (``WritesBehind.write_local``).

A group of records is one script call (``lua/local.lua``): each job created running as
``start`` creates it, at the time it started, then ended as ``finish`` ends it (or asked to
cancel as ``cancel`` asks), at its own time, with the events of both in order. The changes
are computed here by :mod:`afterwork._lifecycle` (``local_changes``), as for any finish.

The script is atomic, and checks every record before its first write. A repeat after a lost
reply writes nothing twice: a job already stored is not created again, and its change is
applied only while it still runs under the record's token. On a cluster the group goes to
the store's one slot, like every script (every key carries the store's hash tag).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from ._redis_scripts import (
    SCRIPTS,
    Script,
    Timelines,
    change_item,
    fmt,
    job_args,
    remember_timeline,
)

if TYPE_CHECKING:
    from .._engine.writebehind import LocalRecord
    from ..job import Job

__all__ = ("LocalWritesMixin",)


class LocalWritesMixin:
    """``write_local`` of :class:`~afterwork.backends.redis.RedisBackend`."""

    if TYPE_CHECKING:
        _held: dict[str, tuple[str, Job]]
        _timelines: Timelines

        def now(self) -> float: ...

        async def _eval(
            self, script: Script, *args: str, retry_for: float | None = None, replay: int = -1
        ) -> Any: ...

        def _parse(self, record: list[Any], job_id: str | None = None) -> Job: ...

    async def write_local(self, records: Sequence[LocalRecord]) -> None:
        """Write the jobs run in this process whose records were kept back
        (``writebehind``), in one script call, each at the times it really started and
        ended. All or nothing; safe to repeat."""
        from .._engine.writebehind import local_changes

        if not records:
            return
        now = self.now()
        items: list[dict[str, Any]] = []
        for record in records:
            _, change = local_changes(record, now=now, exact=fmt)
            item: dict[str, Any] = {
                "job": job_args(record.new),
                "worker": record.worker,
                "token": record.token,
                "ttl": repr(float(record.lease_ttl)),
                "at": f"{record.started_at:.6f}",
            }
            if change is not None:
                if record.outcome is not None and record.finished_at is not None:
                    entry = change_item("finish", change, expect={}, done=record.token)
                    at = record.finished_at
                else:
                    entry = change_item("cancel", change, expect={}, cancelpub=True)
                    at = now
                del entry["expect"], entry["id"]
                entry["at"] = f"{at:.6f}"
                remember_timeline(self._timelines, entry["set"].get("tl"), change.job.timeline)
                item["change"] = entry
            items.append(item)
        reply = await self._eval(SCRIPTS["local"], to_json(items).decode())
        for record, stored in zip(records, reply, strict=True):
            if stored != 0:  # still running: this process holds its lease
                self._held[record.new.id] = (record.token, self._parse(stored))
