from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Header, HTTPException

from afterwork import Afterwork, Job, JobCall
from afterwork.metrics import Metrics

logger = logging.getLogger("app.jobs")
audit: list[str] = []


async def timing(call: JobCall, call_next: Callable[[], Awaitable[Job | None]]) -> Job | None:
    """Async middleware: log how long each enqueue and attempt took, and how it ended."""
    started = time.perf_counter()
    job = await call_next()
    status = job.status.value if job is not None else "lease lost"
    logger.info("%s %s: %s in %.3fs", call.kind, call.task, status, time.perf_counter() - started)
    return job


def audit_log(call: JobCall, call_next: Callable[[], Job | None]) -> Job | None:
    """Sync middleware: runs in a worker thread, so blocking I/O here is fine."""
    job = call_next()
    if call.kind == "attempt" and job is not None:
        audit.append(f"{call.task} attempt {call.attempt}: {job.status.value}")
    return job


aw = Afterwork("memory://", middleware=[timing])
aw.middleware(audit_log)  # added after: runs inside ``timing``
metrics = Metrics(aw)  # Prometheus counters and histograms, on the same seam


@aw.task(retries=2)
async def resize(image: str) -> str:
    return f"{image} resized"


def require_admin(authorization: str = Header("")) -> None:
    if authorization != "Bearer admin-token":
        raise HTTPException(401)


app = FastAPI(lifespan=aw.lifespan)
app.include_router(
    aw.router(auth=Depends(require_admin), metrics=metrics),  # GET /afterwork/metrics
    prefix="/afterwork",
)
