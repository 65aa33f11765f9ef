from __future__ import annotations

from afterwork import Afterwork, RateLimit

aw = Afterwork("memory://")
sent: list[str] = []


@aw.task(rate_limit=RateLimit(2, per=60.0, key="api_host"))  # 2 starts a minute per host
async def call_api(api_host: str, path: str) -> None:
    sent.append(f"{api_host}{path}")


async def a_burst_of_calls() -> list[str | None]:
    jobs = [await call_api.enqueue("api.example.com", f"/items/{n}") for n in range(3)]
    await call_api.enqueue("other.example.com", "/items/0")  # another host: its own limit
    await aw.drain()  # three start: two for api.example.com, one for other.example.com
    third = await aw.get_job(jobs[2].id)  # waits (queued, never failed) and says why
    return [third.status.value, third.waiting_reason] if third else []
