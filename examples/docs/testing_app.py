"""docs/testing.md: the app under test."""

from __future__ import annotations

from fastapi import FastAPI

from afterwork import Afterwork
from afterwork.fastapi import Jobs

aw = Afterwork("memory://")  # your store: "sqlite:///./afterwork.db", "redis://…"
app = FastAPI(lifespan=aw.lifespan)
OUTBOX: list[str] = []  # what a real mailer would send


@aw.task(retries=3)
def send_welcome(email: str) -> None:
    OUTBOX.append(email)


def audit(line: str) -> None:  # a plain function: runs in the web process
    OUTBOX.append(f"audit: {line}")


@app.post("/signup")
async def signup(email: str, jobs: Jobs) -> dict[str, str]:
    job = jobs.add_task(send_welcome, email)
    jobs.add_task(audit, f"signup {email}")
    return {"job": job.id}
