"""The Redis backend's :class:`~afterwork.backends.base.Leases` half (``lua/lease.lua``).

Each lease is a hash ``<prefix>:nlease:<name>`` (token, holder, acquired, expires) beside
the set of names ``<prefix>:nleases``; every operation is one script, so the token compare
and the write are atomic, and time is the store clock (the server's ``TIME``, or the
injected clock), as for job leases.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._redis_scripts import SCRIPTS, Script
from .base import LeaseInfo

__all__ = ("LeasesMixin",)

_LEASE = SCRIPTS["lease"]


class LeasesMixin:
    if TYPE_CHECKING:

        async def _eval(
            self, script: Script, *args: str, retry_for: float | None = None, replay: int = -1
        ) -> Any: ...

    async def acquire_lease(self, name: str, holder: str, *, ttl: float) -> str | None:
        token = os.urandom(16).hex()
        taken = await self._eval(_LEASE, "acquire", name, token, repr(float(ttl)), holder)
        return token if int(taken) == 1 else None

    async def renew_lease(self, name: str, token: str, *, ttl: float) -> bool:
        return int(await self._eval(_LEASE, "renew", name, token, repr(float(ttl)), "")) == 1

    async def release_lease(self, name: str, token: str) -> bool:
        return int(await self._eval(_LEASE, "release", name, token, "0", "")) == 1

    async def list_leases(self) -> list[LeaseInfo]:
        rows = await self._eval(_LEASE, "list", "", "", "0", "")
        found = [
            LeaseInfo(
                name=str(name),
                holder=str(holder),
                acquired_at=float(acquired),
                expires_at=float(expires),
            )
            for name, holder, acquired, expires in rows or ()
        ]
        return sorted(found, key=lambda lease: lease.name)
