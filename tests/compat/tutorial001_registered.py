# tutorial001 with the task registered (durable, retried, run by any worker). The changes a
# migrating user makes are marked "# afterwork".
from __future__ import annotations

from fastapi import FastAPI

from afterwork import Afterwork  # afterwork
from afterwork.fastapi import Jobs  # afterwork

aw = Afterwork("memory://")  # afterwork
app = FastAPI(lifespan=aw.lifespan)  # afterwork


@aw.task  # afterwork
def write_notification(email: str, message=""):
    with open("log.txt", mode="w") as email_file:
        content = f"notification for {email}: {message}"
        email_file.write(content)


@app.post("/send-notification/{email}")
async def send_notification(email: str, background_tasks: Jobs):  # afterwork
    background_tasks.add_task(write_notification, email, message="some notification")
    return {"message": "Notification sent in the background"}
