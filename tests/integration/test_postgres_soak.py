"""Bloat soak on PostgreSQL (soak tier: ``pytest --soak``, ``make soak``).

A steady load for a few minutes on a private postgres at its default autovacuum settings
(but ``autovacuum_naptime``: see ``NAPTIME``): jobs enqueued at a fixed ``RATE`` (below
what this shared machine drains) and drained, finished jobs purged past a short
``result_ttl`` (the worker's reaper, 500 rows a transaction) and events trimmed to a small
``event_retention`` (a bounded batch per trim). The store's table and index sizes
(``pg_total_relation_size``) are sampled throughout: they must plateau, not grow with the
number of jobs run. ``AFTERWORK_SOAK_SECONDS`` sets the length (default 180 s).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import anyio
import asyncpg
import pytest

from afterwork import Afterwork

from ..pg_server import PostgresServer

pytestmark = [pytest.mark.anyio, pytest.mark.soak, pytest.mark.slow]

SECONDS = float(os.environ.get("AFTERWORK_SOAK_SECONDS", "180"))
#: autovacuum's pause between rounds (PostgreSQL's default is 60 s). The plateau is reached
#: after a few rounds; 10 s fits them in three minutes. ``AFTERWORK_SOAK_NAPTIME=60`` with
#: ``AFTERWORK_SOAK_SECONDS=600`` runs at the server's defaults (docs/postgres.md has both).
NAPTIME = os.environ.get("AFTERWORK_SOAK_NAPTIME", "10")
RATE = 20  # jobs a second, in batches of 5: below what this shared machine drains (~40/s)
BACKLOG = 200  # the most jobs kept waiting (if the worker falls behind, the load waits)
SAMPLE = 3.0  # seconds between size samples
MAX_GROWTH = 0.20  # the last third's mean over the middle third's


SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'soak' AND c.relkind = 'r'
"""


@pytest.mark.timeout(SECONDS + 300)
async def test_table_and_index_sizes_plateau_under_a_steady_load() -> None:
    server = PostgresServer(settings={"autovacuum_naptime": NAPTIME})
    server.start()
    url = f"{server.url}?schema=soak&event_retention=2000"
    aw = Afterwork(url, reaper_interval=0.5, heartbeat_interval=1.0)
    done = 0

    room = anyio.Event()

    @aw.task(result_ttl=2.0)
    async def noop(n: int) -> int:
        nonlocal done
        done += 1
        room.set()
        return n

    samples: list[tuple[float, int, dict[str, int], int]] = []  # t, total, per table, backlog
    enqueued = 0
    try:
        admin = await asyncpg.connect(server.url)
        async with aw, aw.worker(concurrency=20):
            start = time.monotonic()

            async def load() -> None:
                nonlocal enqueued, room
                due = start  # a fixed rate: when the next batch is due
                while time.monotonic() - start < SECONDS:
                    if enqueued - done >= BACKLOG:
                        room = anyio.Event()
                        with anyio.move_on_after(5):  # bounded: re-check the clock
                            await room.wait()
                        continue
                    batch = [aw.build_job(noop, (enqueued + i,), {}, {}) for i in range(5)]
                    await aw.enqueue_many(batch)
                    enqueued += len(batch)
                    due += len(batch) / RATE
                    await anyio.sleep(max(due - time.monotonic(), 0))  # pacing, not waiting

            async def sample() -> None:
                while time.monotonic() - start < SECONDS:
                    await anyio.sleep(SAMPLE)
                    sizes = {row[0]: int(row[1]) for row in await admin.fetch(SIZES)}
                    backlog = int(
                        await admin.fetchval(
                            "SELECT count(*) FROM soak.jobs WHERE status IN ('queued', 'running')"
                        )
                    )
                    samples.append((time.monotonic() - start, sum(sizes.values()), sizes, backlog))

            async with anyio.create_task_group() as group:
                group.start_soon(load)
                group.start_soon(sample)
            rows = int(await admin.fetchval("SELECT count(*) FROM soak.jobs"))
            events = int(await admin.fetchval("SELECT count(*) FROM soak.events"))
            vacuums = await admin.fetch(
                "SELECT relname, autovacuum_count, n_dead_tup, n_tup_del FROM pg_stat_user_tables"
                " WHERE schemaname = 'soak' AND relname IN ('jobs', 'events') ORDER BY relname"
            )
        await admin.close()
    finally:
        server.remove()

    third = len(samples) // 3
    middle = [s[1] for s in samples[third : 2 * third]]
    last = [s[1] for s in samples[2 * third :]]
    growth = statistics.mean(last) / statistics.mean(middle) - 1
    kb = 1024
    lines = [
        f"PostgreSQL bloat soak: {SECONDS:.0f} s (autovacuum_naptime {NAPTIME} s),"
        f" {enqueued} jobs enqueued, {done} run"
        f" ({done / SECONDS:.0f}/s); jobs rows at the end {rows}, events rows {events}"
    ]
    for t, total, sizes, backlog in samples[:: max(len(samples) // 12, 1)]:
        lines.append(
            f"  t={t:6.1f}s total={total / kb:8.0f} kB jobs={sizes.get('jobs', 0) / kb:7.0f} kB"
            f" events={sizes.get('events', 0) / kb:7.0f} kB backlog={backlog}"
        )
    lines.append(
        f"  mean total: middle third {statistics.mean(middle) / kb:.0f} kB,"
        f" last third {statistics.mean(last) / kb:.0f} kB ({growth:+.1%});"
        f" max {max(s[1] for s in samples) / kb:.0f} kB"
    )
    lines += [f"  {r[0]}: autovacuums={r[1]} dead={r[2]} deleted={r[3]}" for r in vacuums]
    sys.stdout.write("\n" + "\n".join(lines) + "\n")  # the figures, for the docs (pytest -s)
    assert done >= SECONDS * RATE * 0.9, "the worker kept up with the load"
    assert max(s[3] for s in samples) <= BACKLOG + 20, "the backlog stays bounded"
    assert growth < MAX_GROWTH, f"sizes still grow: {growth:+.1%} from the middle to the last third"
    assert events <= 2000 + 2 * 1000 + 50  # trimmed to event_retention (one step behind at most)
