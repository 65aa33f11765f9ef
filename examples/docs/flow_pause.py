from __future__ import annotations

from afterwork import Afterwork

aw = Afterwork("memory://")


@aw.task(queue="media")
async def transcode(video_id: int) -> str:
    return f"video {video_id} done"


async def maintenance_window() -> list[str]:
    await aw.pause("media")  # every worker sharing the store stops starting "media" jobs
    job = await transcode.enqueue(42)  # still accepted: it waits
    assert await aw.drain() == 0  # nothing from "media" starts
    assert await aw.paused_queues() == {"media"}
    await aw.resume("media")
    await aw.drain()
    done = await job.wait(timeout=10)
    return [done.status.value, str(done.result)]
