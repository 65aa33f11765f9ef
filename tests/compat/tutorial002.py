# FastAPI's docs_src/background_tasks/tutorial002.py (dependency injection), migrated to
# afterwork. The changes a migrating user makes are marked "# afterwork".
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI

from afterwork import Afterwork  # afterwork
from afterwork.fastapi import Jobs  # afterwork

aw = Afterwork("memory://")  # afterwork
app = FastAPI(lifespan=aw.lifespan)  # afterwork


def write_log(message: str):
    with open("log.txt", mode="a") as log:
        log.write(message)


def get_query(background_tasks: Jobs, q: str | None = None):  # afterwork
    if q:
        message = f"found query: {q}\n"
        background_tasks.add_task(write_log, message)
    return q


@app.post("/send-notification/{email}")
async def send_notification(
    email: str,
    background_tasks: Jobs,
    q: Annotated[str, Depends(get_query)],  # afterwork
):
    message = f"message to {email}\n"
    background_tasks.add_task(write_log, message)
    return {"message": "Message sent"}
