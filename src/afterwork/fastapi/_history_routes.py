"""``GET /history``: per-minute history (``afterwork.history``) summed into steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

if TYPE_CHECKING:
    from ..app import Afterwork

__all__ = ("HistoryPointOut", "add_history_routes")


class HistoryPointOut(BaseModel):
    """One step of history. Times are seconds; ``at`` is seconds since the epoch."""

    at: float
    task: str | None
    queue: str | None
    succeeded: int
    failed: int
    retried: int
    attempts: int
    run_mean: float | None
    run_p50: float | None
    run_p95: float | None
    wait_mean: float | None
    wait_p50: float | None
    wait_p95: float | None


def add_history_routes(router: APIRouter, aw: Afterwork) -> None:
    @router.get("/history", response_model=list[HistoryPointOut], summary="History per step")
    async def history(
        since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        until: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        step: Annotated[int, Query(ge=60, le=31 * 86_400, multiple_of=60)] = 60,
        task: str | None = None,
        queue: str | None = None,
        by: Annotated[list[Literal["task", "queue", "none"]] | None, Query()] = None,
    ) -> list[HistoryPointOut]:
        """Counts and p50/p95 timings per step, grouped ``by`` task and queue (the default),
        one of them (``by=task``), or neither (``by=none``: totals)."""
        groups = ("task", "queue") if not by else tuple(g for g in by if g != "none")
        try:
            points = await aw.history(
                since=since, until=until, step=step, task=task, queue=queue, by=groups
            )
        except ValueError as exc:  # FastAPI's shape of a 422, as the schema says
            detail = [{"loc": ["query"], "msg": str(exc), "type": "value_error"}]
            raise HTTPException(422, detail) from None
        return [HistoryPointOut.model_validate(p.to_dict()) for p in points]
