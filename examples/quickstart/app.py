"""The README's quick start: a FastAPI app whose background work is tracked and retried.

Run it with ``make demo`` (or ``uvicorn examples.quickstart.app:app``), then::

    curl -X POST 'localhost:8000/signup?email=ada@example.com'
    curl localhost:8000/jobs/<id>
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI, HTTPException

from afterwork import Afterwork, JobContext, Retry
from afterwork.fastapi import Jobs

logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")

aw = Afterwork(os.environ.get("AFTERWORK_URL", "memory://"))


@aw.task(retries=3, backoff=Retry.exponential(base=0.5, cap=10.0), timeout=30.0)
async def send_welcome_email(email: str) -> dict[str, str]:
    """A durable, retried task: any worker can run it."""
    if email.endswith("@flaky.example"):
        raise ConnectionError("the mail server did not answer")
    return {"sent_to": email}


@aw.task(queue="reports")
def build_report(user_email: str, ctx: JobContext) -> str:
    """A sync task runs in a worker thread and reports progress."""
    for step in range(1, 5):
        ctx.progress(step / 4, f"step {step} of 4")
    return f"report for {user_email}"


def audit(event: str, email: str) -> None:
    """A plain function: Jobs.add_task runs it after the response, tracked."""
    logging.getLogger("quickstart").info("audit: %s %s", event, email)


app = FastAPI(title="afterwork quick start", lifespan=aw.lifespan)


@app.post("/signup")
async def signup(email: str, jobs: Jobs) -> dict[str, Any]:
    # Before: background_tasks.add_task(send_welcome_email, email)
    welcome = jobs.add_task(send_welcome_email, email)  # same signature, now tracked
    jobs.add_task(audit, "signup", email)
    report = await build_report.enqueue(email)  # durable now, returns the Job
    return {"welcome_job": welcome.id, "report_job": report.id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> dict[str, Any]:
    job = await aw.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="no such job")
    return job.to_dict()
