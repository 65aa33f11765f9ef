"""A short SQLite write runs on the caller's thread only when the write lock is free.

Otherwise it goes to the store's thread, which waits for the lock as every write does
(``backends/_sqlite_db.py``): nothing is lost, nothing fails for it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from afterwork import Afterwork, JobStatus

pytestmark = pytest.mark.anyio


async def test_an_enqueue_waits_on_the_thread_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    async with Afterwork(f"sqlite:///{path}") as aw:

        @aw.task(name="noop")
        async def noop(n: int) -> None: ...

        db = aw.backend._db  # type: ignore[attr-defined]
        first = await noop.enqueue(1)
        assert db.inline_writes >= 1  # the lock was free: no thread hop
        before = db.inline_writes

        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's write transaction
            pending = asyncio.ensure_future(noop.enqueue(2))
            for _ in range(20):
                await asyncio.sleep(0)  # let it try: it cannot commit while the lock is held
            assert not pending.done()
            assert db.inline_writes == before
            other.execute("COMMIT")
            second = await asyncio.wait_for(pending, timeout=30)
        finally:
            other.close()
        assert db.inline_writes == before  # it went to the thread
        for job in (first, second):
            stored = await aw.get_job(job.id)
            assert stored is not None and stored.status is JobStatus.QUEUED
