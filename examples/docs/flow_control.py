from __future__ import annotations

from fastapi import FastAPI, Response

from afterwork import Afterwork

aw = Afterwork("memory://")
app = FastAPI(lifespan=aw.lifespan)
calls: list[tuple[str, int]] = []


@aw.task(concurrency=3)  # at most 3 running at once, across every worker process
async def call_partner_api(order_id: int) -> None:
    calls.append(("partner", order_id))


@aw.task(concurrency=1, concurrency_key="customer_id")  # one at a time per customer
async def sync_customer(customer_id: int, full: bool = False) -> None:
    calls.append(("customer", customer_id))


@aw.task(local_concurrency=2)  # at most 2 per worker process (what concurrency= meant before)
def resize_image(path: str) -> None:
    calls.append(("resize", len(path)))


@app.post("/orders/{order_id}/invoice")
async def send_invoice(order_id: int, response: Response) -> dict[str, str]:
    job = await call_partner_api.options(key=f"invoice:{order_id}").enqueue(order_id)
    response.status_code = 201 if job.created_now else 200  # 200: an unfinished job had the key
    return {"job": job.id}
