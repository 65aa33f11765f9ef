"""Routes for schedules and services, added only when the ``Afterwork`` instance has them.

The scheduler and the services supervisor are built apart from the router. The router
relies on this small contract, and adds the routes when the attribute exists (even empty):

* ``aw.schedules``: a mapping of name → schedule (or an iterable of schedules with a
  ``name``). ``GET /schedules`` lists them; ``POST /schedules/{name}/trigger`` runs one now
  through ``await aw.trigger_schedule(name)`` if ``aw`` has it, else ``schedule.trigger()``
  or ``schedule.run_now()`` (sync or async). A returned :class:`~afterwork.Job` is echoed.
* ``aw.services``: the same shape; ``GET /services`` lists them.

Each item is described by its ``to_dict()`` if it has one, else by its public attributes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from ..job import Job
from ._schemas import JobOut

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("TriggerOut", "add_schedule_routes", "add_service_routes", "describe")


class TriggerOut(BaseModel):
    """A schedule run by hand, and the job it enqueued (when the scheduler says)."""

    schedule: str
    job: JobOut | None = None


def _json_value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return _json_value(value.value, depth)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if depth < 4 and isinstance(value, Mapping):
        return {str(k): _json_value(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v, depth + 1) for v in value]
    name = getattr(value, "name", None)
    if isinstance(name, str):  # a Task, a function
        return name
    return str(value)


def describe(item: Any) -> dict[str, Any]:
    """A JSON-ready description of a schedule or a service."""
    to_dict = getattr(item, "to_dict", None)
    if callable(to_dict):
        raw = to_dict()
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        raw = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    else:
        raw = {k: v for k, v in vars(item).items() if not k.startswith("_") and not callable(v)}
    data = {str(k): _json_value(v) for k, v in dict(raw).items()}
    json.dumps(data)  # fail here, loudly, rather than in the response
    return data


def _items(source: Any) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return {str(name): item for name, item in source.items()}
    if isinstance(source, Iterable):
        return {str(getattr(item, "name", i)): item for i, item in enumerate(source)}
    raise TypeError(f"expected a mapping or an iterable, not {type(source).__name__}")


def _listing(source: Any) -> list[dict[str, Any]]:
    return [{"name": name, **describe(item)} for name, item in _items(source).items()]


def add_schedule_routes(router: APIRouter, aw: Afterwork) -> bool:
    """Add ``GET /schedules`` and ``POST /schedules/{name}/trigger`` if ``aw`` has schedules."""
    if getattr(aw, "schedules", None) is None:
        return False

    @router.get("/schedules", response_model=list[dict[str, Any]], summary="Schedules")
    async def schedules() -> list[dict[str, Any]]:
        return _listing(aw.schedules)  # type: ignore[attr-defined]

    @router.post("/schedules/{name}/trigger", response_model=TriggerOut, summary="Run now")
    async def trigger(name: Annotated[str, Path(max_length=500)]) -> TriggerOut:
        item = _items(aw.schedules).get(name)  # type: ignore[attr-defined]
        if item is None:
            raise HTTPException(404, f"no schedule named {name!r}")
        run = getattr(aw, "trigger_schedule", None)
        if callable(run):
            outcome = run(name)
        else:
            run = getattr(item, "trigger", None) or getattr(item, "run_now", None)
            if not callable(run):
                raise HTTPException(501, "this scheduler cannot run a schedule by hand")
            outcome = run()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        job = JobOut.of(outcome) if isinstance(outcome, Job) else None
        return TriggerOut(schedule=name, job=job)

    return True


def add_service_routes(router: APIRouter, aw: Afterwork) -> bool:
    """Add ``GET /services`` if ``aw`` has services."""
    if getattr(aw, "services", None) is None:
        return False

    @router.get("/services", response_model=list[dict[str, Any]], summary="Services")
    async def services() -> list[dict[str, Any]]:
        return _listing(aw.services)  # type: ignore[attr-defined]

    return True
