"""The app the multi-process singleton test runs with ``afterwork worker``.

The store comes from ``AFTERWORK_URL``; the ledger (one JSON line per start and stop of
the singleton, with the pid) from ``SINGLETON_LEDGER``.
"""

from __future__ import annotations

import json
import os
import time

from afterwork import Afterwork, ServiceContext

#: The singleton's lease: a killed holder is replaced within it (plus a fifth of it).
LEASE = 2.0

aw = Afterwork(lease_ttl=3.0)  # workers' presence (and job leases) expire within 3 s


def note(event: str) -> None:
    line = json.dumps({"pid": os.getpid(), "ev": event, "t": time.time()})
    with open(os.environ["SINGLETON_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(line + "\n")


@aw.service(name="leader", singleton=True, lease_ttl=LEASE)
async def leader(ctx: ServiceContext) -> None:
    note("start")
    try:
        await ctx.wait_stopping()
    finally:
        note("stop")
