from __future__ import annotations

from afterwork import Afterwork

aw = Afterwork("memory://")


class PartnerDown(Exception):
    pass


@aw.task(name="sync_orders")
async def sync_orders(batch: int) -> None:
    raise PartnerDown(f"batch {batch}: 503 from the partner")


async def after_the_outage() -> int:
    for batch in range(3):
        await sync_orders.enqueue(batch)
    await aw.drain()  # all three fail while the partner is down
    retried = await aw.retry_jobs(
        status="failed",
        task="sync_orders",
        error_type=f"{__name__}.PartnerDown",
        since=3600,  # failed within the last hour
    )
    return len(retried)
