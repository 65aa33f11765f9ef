"""What enqueuing inside the app's own SQLite transaction costs (docs/transactions.md).

Usage::

    .venv/bin/python bench/transactional_bench.py [--orders 1000]

One SQLite file (WAL) holds an ``orders`` table and the store. Each scenario saves
``--orders`` orders one at a time, each with one job, and times each order:

* ``row, then enqueue``: commit the order, then ``task.enqueue`` (two transactions: the
  dual write that loses the job if the process dies in between);
* ``row + enqueue, one commit``: ``task.options(connection=session).enqueue`` before the
  commit (the job exists if and only if the order does);
* ``enqueue only``: ``task.enqueue`` alone, for reference.

Medians and p99 in milliseconds, and orders per second, sequential, no worker running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from afterwork import Afterwork


async def run(orders: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "app.db"
        aw = Afterwork(f"sqlite:///{db}")

        @aw.task(name="receipt")
        async def receipt(order_id: int) -> None: ...

        engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
        async with aw:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, n INT)"))

            async def dual_write(n: int) -> None:
                async with AsyncSession(engine) as session:
                    await session.execute(text("INSERT INTO orders (n) VALUES (:n)"), {"n": n})
                    await session.commit()
                await receipt.enqueue(n)

            async def transactional(n: int) -> None:
                async with AsyncSession(engine) as session:
                    await session.execute(text("INSERT INTO orders (n) VALUES (:n)"), {"n": n})
                    await receipt.options(connection=session).enqueue(n)
                    await session.commit()

            async def enqueue_only(n: int) -> None:
                await receipt.enqueue(n)

            scenarios: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
                ("row, then enqueue", dual_write),
                ("row + enqueue, one commit", transactional),
                ("enqueue only", enqueue_only),
            ]
            for name, step in scenarios:
                for n in range(20):  # warm up
                    await step(n)
                times: list[float] = []
                started = time.perf_counter()
                for n in range(orders):
                    t0 = time.perf_counter()
                    await step(n)
                    times.append((time.perf_counter() - t0) * 1000)
                elapsed = time.perf_counter() - started
                times.sort()
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                print(
                    f"{name:28} median {statistics.median(times):6.2f} ms"
                    f"  p99 {p99:6.2f} ms  {orders / elapsed:7.0f} orders/s"
                )
        await engine.dispose()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    asyncio.run(run(parser.parse_args().orders))


if __name__ == "__main__":
    main()
