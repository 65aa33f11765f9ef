"""The app the multi-process scheduler test runs with ``afterwork worker``.

The store comes from ``AFTERWORK_URL`` (``Afterwork()`` reads it).
"""

from __future__ import annotations

from datetime import timedelta

from afterwork import Afterwork

aw = Afterwork()


@aw.every(timedelta(seconds=1), name="heartbeat")
async def heartbeat() -> None:
    """Does nothing: the test counts the jobs its ticks create."""
