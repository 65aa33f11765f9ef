"""Routes for schedules (``@aw.cron``, ``@aw.every``) and services (``@aw.service``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel

from ..exceptions import ScheduleNotFound
from ._schemas import JobOut

if TYPE_CHECKING:
    from ..app import Afterwork
    from ..metrics import Metrics

__all__ = (
    "ScheduleOut",
    "ServiceInstanceOut",
    "ServiceOut",
    "TriggerOut",
    "add_metrics_route",
    "add_schedule_routes",
    "add_service_routes",
    "add_worker_routes",
)


class ScheduleOut(BaseModel):
    """A schedule, its next run and the latest tick the store enqueued."""

    name: str
    task: str
    kind: str
    spec: str
    tz: str
    misfire: str
    next_run: float | None
    next_run_at: str | None
    last_run: float | None
    last_run_at: str | None


class ErrorOut(BaseModel):
    type: str
    message: str
    traceback: str


class ServiceInstanceOut(BaseModel):
    """A process running a service (for a singleton: the one holding its lease)."""

    host: str
    pid: int
    local: bool
    """The process that answered this request."""
    state: str
    since: float | None


class ServiceOut(BaseModel):
    """A supervised service's health in this process, and every process running it."""

    name: str
    state: str
    restart: str
    restarts: int
    crashes: int
    last_error: ErrorOut | None
    started_at: float | None
    uptime: float | None
    singleton: bool
    instances: list[ServiceInstanceOut]


class TriggerOut(BaseModel):
    """A schedule run by hand, and the job it enqueued."""

    schedule: str
    job: JobOut


def add_schedule_routes(router: APIRouter, aw: Afterwork) -> None:
    """``GET /schedules`` and ``POST /schedules/{name}/trigger`` ("run now")."""

    @router.get("/schedules", response_model=list[ScheduleOut], summary="Schedules")
    async def schedules() -> list[dict[str, Any]]:
        return [info.to_dict() for info in await aw.list_schedules()]

    # ``:path``: a schedule name may contain "/" (sent as %2F, decoded before routing).
    @router.post("/schedules/{name:path}/trigger", response_model=TriggerOut, summary="Run now")
    async def trigger(name: Annotated[str, Path(max_length=500)]) -> TriggerOut:
        try:
            job = await aw.trigger(name)
        except ScheduleNotFound:
            raise HTTPException(404, f"no schedule named {name!r}") from None
        return TriggerOut(schedule=name, job=JobOut.of(job))


def add_service_routes(router: APIRouter, aw: Afterwork) -> None:
    """``GET /services``: each supervised service's state, restarts, crashes, last error."""

    @router.get("/services", response_model=list[ServiceOut], summary="Services")
    async def services() -> list[dict[str, Any]]:
        instances: dict[str, list[dict[str, Any]]] = {}
        for instance in await aw.service_instances():
            instances.setdefault(instance.service, []).append(instance.to_dict())
        return [
            {**status.to_dict(), "instances": instances.get(status.name, [])}
            for status in aw.services
        ]


def add_metrics_route(router: APIRouter, metrics: Metrics) -> None:
    """``GET /metrics``: Prometheus' text format (queue counts read from the store, cached)."""
    from ..metrics import CONTENT_TYPE

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE)


class WorkerOut(BaseModel):
    """A live worker (its presence record). Timestamps are seconds since the epoch."""

    id: str
    host: str
    pid: int
    version: str
    queues: list[str] | None
    concurrency: int
    running: list[str]
    started_at: float
    last_seen: float
    expires_at: float
    services: list[str] = []
    """The services its process runs now."""


def add_worker_routes(router: APIRouter, aw: Afterwork) -> None:
    @router.get("/workers", response_model=list[WorkerOut], summary="Live workers")
    async def workers() -> list[WorkerOut]:
        return [WorkerOut.model_validate(w.to_dict()) for w in await aw.workers()]
