"""docs/fastapi.md: Jobs in routers and mounted apps, Depends in plain functions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import Response

from afterwork import Afterwork
from afterwork.fastapi import Jobs

aw = Afterwork("memory://")  # your store: "sqlite:///./afterwork.db", "redis://…"
AUDIT: list[str] = []


class Session:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def commit(self) -> None:
        AUDIT.extend(self.rows)


def get_db() -> Iterator[Session]:
    db = Session()
    yield db  # a fresh session for the job, not the route's (closed by then)
    db.commit()


def audit(action: str, db: Session = Depends(get_db)) -> None:
    db.rows.append(action)


# -- routers and mounted apps ---------------------------------------------------------

users = APIRouter(prefix="/users")


@users.post("/signup")
async def signup(jobs: Jobs) -> dict[str, str]:
    job = jobs.add_task(audit, "signup")  # db is resolved when the job runs
    return {"job": job.id}


admin = FastAPI()  # a mounted app: its own lifespan never runs


@admin.post("/purge")
async def purge(jobs: Jobs) -> dict[str, str]:
    return {"job": jobs.add_task(audit, "purge").id}


app = FastAPI(lifespan=aw.lifespan)
app.include_router(users)
app.mount("/admin", admin)


# -- what is refused, and what never runs ---------------------------------------------


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def log_visit(ip: Annotated[str, Depends(client_ip)]) -> None: ...


@app.post("/visit")
async def visit(request: Request, jobs: Jobs) -> None:
    # jobs.add_task(log_visit) raises DependencyError: the job runs after the response,
    # outside the request. Pass the value instead:
    jobs.add_task(audit, f"visit from {client_ip(request)}")


@app.get("/download")
async def download(jobs: Jobs) -> Response:
    jobs.add_task(audit, "download")  # never runs: the Response brings its own background
    return Response("file", background=BackgroundTask(AUDIT.append, "theirs"))
