"""``afterwork jobs retry|cancel`` by filter: count first, ask, then act on each job."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from .app import Afterwork
    from .job import Job, JobStatus

__all__ = ("BulkFilters", "bulk", "parse_duration")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d``, ``1w`` → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise typer.BadParameter(f"not a duration: {text!r} (try 90s, 30m, 1h, 2d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


Since = Annotated[
    str | None,
    typer.Option("--since", help="only jobs that finished (else were created) within: 1h"),
]
Until = Annotated[
    str | None, typer.Option("--until", help="only jobs that finished this long ago or more")
]
ErrorType = Annotated[
    str | None, typer.Option("--error-type", "-e", help="only jobs whose error has this type")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="list the jobs, change nothing")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


class BulkFilters:
    """The filter options of a bulk action, as the command received them."""

    def __init__(
        self,
        status: list[JobStatus] | None,
        queue: str | None,
        task: str | None,
        error_type: str | None,
        since: str | None,
        until: str | None,
    ) -> None:
        self.status = status or None
        self.queue, self.task, self.error_type = queue, task, error_type
        self.since = None if since is None else parse_duration(since)
        self.until = None if until is None else parse_duration(until)

    @property
    def given(self) -> bool:
        return any(
            v is not None
            for v in (self.status, self.queue, self.task, self.error_type, self.since, self.until)
        )


def bulk(
    verb: str,
    applicable: tuple[JobStatus, ...],
    filters: BulkFilters,
    act: Callable[[Afterwork, str], Awaitable[bool]],
    *,
    app: str | None,
    url: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Select, show the count (list with ``--dry-run``), ask unless ``--yes``, then act."""
    from ._bulk import JobSelection
    from ._cli_jobs import _print_json, _run, _safe

    try:
        selection = JobSelection.of(
            filters.status,
            applicable,
            queue=filters.queue,
            task=filters.task,
            error_type=filters.error_type,
            since=filters.since,
            until=filters.until,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    jobs: list[Job] = _run(app, url, lambda aw: aw.select_jobs(selection))
    if dry_run:
        if as_json:
            _print_json({"matched": len(jobs), "jobs": [job.to_dict() for job in jobs]})
            return
        for job in jobs:
            typer.echo(_safe(f"{job.id}  {job.status.value:<9}  {job.task}"))
        typer.echo(f"{len(jobs)} job(s) would be {verb}; nothing changed (--dry-run)")
        return
    if not jobs:
        typer.echo(f"no job matches; nothing {verb}")
        return
    imperative = {"retried": "retry", "cancelled": "cancel"}.get(verb, verb)
    if not yes and not typer.confirm(f"{imperative} {len(jobs)} job(s)?"):
        typer.echo("nothing changed")
        raise typer.Exit(1)

    async def run_all(aw: Afterwork) -> int:
        changed = 0
        for job in jobs:
            if await act(aw, job.id):
                changed += 1
        return changed

    changed = _run(app, url, run_all)
    if as_json:
        _print_json({"matched": len(jobs), verb: changed})
    else:
        typer.echo(f"{verb} {changed} of {len(jobs)} job(s)")
