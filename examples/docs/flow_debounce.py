from __future__ import annotations

from afterwork import Afterwork

aw = Afterwork("memory://")
indexed: list[str] = []


@aw.task(debounce=5.0)  # runs once the key has been quiet for 5 s
async def reindex(doc_id: int, text: str) -> None:
    indexed.append(text)


async def on_save(doc_id: int, text: str) -> bool:
    job = await reindex.options(key=f"doc:{doc_id}").enqueue(doc_id, text)
    return bool(job.created_now)  # False: it joined the waiting job of the burst
