"""``afterwork jobs list|show|cancel|retry``, ``afterwork queues`` and ``afterwork purge``.

Each command finds the store from ``--app MODULE:ATTR`` (your :class:`Afterwork`), or
``--url``, or ``AFTERWORK_URL``, or the default SQLite file in the current directory.
Tables are for people; ``--json`` prints JSON for scripts.

Exit codes: 0 done; 1 no such job, or the job is in a state the command cannot change;
2 bad usage or configuration (including a missing store); 3 the store failed.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._cli_text import safe_block, safe_json, safe_line
from .app import DEFAULT_URL, Afterwork
from .exceptions import AfterworkError, BackendError
from .job import Job, JobStatus

__all__ = ("jobs_app", "purge", "queues")

T = TypeVar("T")

EXIT_NOT_APPLICABLE = 1
EXIT_USAGE = 2
EXIT_STORE = 3

jobs_app: typer.Typer = typer.Typer(
    name="jobs",
    help="List, inspect, cancel and retry jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

AppOption = Annotated[
    str | None,
    typer.Option("--app", "-a", help="MODULE:ATTRIBUTE of your Afterwork instance"),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", "-u", help="the store's URL (default: $AFTERWORK_URL, else ./afterwork.db)"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

_STYLES = {
    JobStatus.SCHEDULED: "cyan",
    JobStatus.QUEUED: "blue",
    JobStatus.RUNNING: "yellow",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "magenta",
}


class Abort(Exception):
    """End the command with a one-line message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _store(app: str | None, url: str | None) -> Afterwork:
    from .cli import CLIError, load_afterwork

    if app is not None and url is not None:
        raise Abort("pass --app or --url, not both", EXIT_USAGE)
    try:
        if app is not None:
            return load_afterwork(app)
        url = url or os.environ.get("AFTERWORK_URL") or DEFAULT_URL
        if url.lower().startswith("sqlite:"):
            from .backends.sqlite import path_from_url

            path = path_from_url(url)
            if not os.path.exists(path):
                # Looking must not create an empty store somewhere unexpected.
                raise Abort(f"no afterwork store at {os.path.abspath(path)}", EXIT_USAGE)
        return Afterwork(url)
    except CLIError as exc:
        raise Abort(str(exc), EXIT_USAGE) from None
    except AfterworkError as exc:
        raise Abort(str(exc), EXIT_USAGE) from None


def _run(app: str | None, url: str | None, action: Callable[[Afterwork], Awaitable[T]]) -> T:
    """Open the store, run ``action``, close it; turn failures into exit codes."""
    try:
        aw = _store(app, url)

        async def main() -> T:
            async with aw:
                return await action(aw)

        return asyncio.run(main())
    except Abort as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except BackendError as exc:
        typer.echo(f"error: the store failed: {exc}", err=True)
        raise typer.Exit(EXIT_STORE) from None
    except AfterworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


# Text for a terminal: control and bidi characters shown escaped, never interpreted.
_safe = safe_line


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _status(job: Job) -> Text:
    label = job.status.value + (" (cancelling)" if job.cancel_requested else "")
    return Text(label, style=_STYLES.get(job.status, ""))


def _print_json(data: Any) -> None:
    typer.echo(safe_json(data))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _print_jobs(jobs: list[Job]) -> None:
    table = Table(title=None, show_lines=False)
    table.add_column("id", no_wrap=True, min_width=32)
    for name in ("task", "queue", "status", "attempts", "created", "error"):
        table.add_column(name, overflow="ellipsis")
    for job in jobs:
        error = "" if job.error is None else f"{job.error.type}: {job.error.message}"
        table.add_row(
            Text(_safe(job.id)),
            Text(_safe(job.task)),
            Text(_safe(job.queue)),
            _status(job),
            Text(f"{job.attempts}/{job.max_attempts}"),
            Text(_when(job.created_at)),
            Text(_safe(error)[:80]),
        )
    _console().print(table)
    if not jobs:
        typer.echo("no jobs")


def _print_job(job: Job) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    fields: list[tuple[str, Any]] = [
        ("id", job.id),
        ("task", job.task),
        ("queue", job.queue),
        ("status", None),
        ("attempts", f"{job.attempts} of {job.max_attempts} (recoveries: {job.recoveries})"),
        ("priority", job.priority),
        ("key", job.key),
        ("args", json.dumps(job.args, ensure_ascii=False)),
        ("kwargs", json.dumps(job.kwargs, ensure_ascii=False)),
        ("created", _when(job.created_at)),
        ("run at", _when(job.run_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("worker", job.worker),
        ("lease until", _when(job.lease_expires_at)),
        ("progress", None if job.progress is None else f"{job.progress:.0%}"),
        ("progress message", job.progress_message),
        ("result", None if job.result is None else json.dumps(job.result, ensure_ascii=False)),
        ("error", None if job.error is None else f"{job.error.type}: {job.error.message}"),
    ]
    for name, value in fields:
        cell = _status(job) if name == "status" else Text(_safe(value))
        table.add_row(Text(name), cell)
    console = _console()
    console.print(table)
    if job.error is not None and job.error.traceback:
        console.print(Text("\n" + safe_block(job.error.traceback), style="dim"))


async def _get(aw: Afterwork, job_id: str) -> Job:
    job = await aw.get_job(job_id)
    if job is None:
        raise Abort(f"no job with id {job_id!r}", EXIT_NOT_APPLICABLE)
    return job


@jobs_app.command("list")
def list_jobs(
    status: Annotated[
        list[JobStatus] | None,
        typer.Option("--status", "-s", help="only jobs in this state (repeatable)"),
    ] = None,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="only this queue")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="only this task")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 50,
    before: Annotated[
        str | None, typer.Option(help="list jobs older than this job id (next page)")
    ] = None,
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""

    async def action(aw: Afterwork) -> list[Job]:
        return await aw.list_jobs(
            status=status or None, queue=queue, task=task, before=before, limit=limit
        )

    jobs = _run(app, url, action)
    if as_json:
        _print_json([job.to_dict() for job in jobs])
    else:
        _print_jobs(jobs)


@jobs_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one job: its state, arguments, result or error."""
    job = _run(app, url, lambda aw: _get(aw, job_id))
    if as_json:
        _print_json(job.to_dict())
    else:
        _print_job(job)


def _change(
    job_id: str,
    app: str | None,
    url: str | None,
    as_json: bool,
    change: Callable[[Afterwork, str], Awaitable[Job | None]],
    accept: Callable[[Job, Job], str | None],
) -> None:
    """Run ``change`` on a job; ``accept(before, after)`` says what happened or ``None``."""

    async def action(aw: Afterwork) -> tuple[Job, Job]:
        before = await _get(aw, job_id)
        after = await change(aw, job_id)
        return before, after if after is not None else before

    before, after = _run(app, url, action)
    message = accept(before, after)
    if as_json:
        _print_json(after.to_dict())
    if message is None:
        typer.echo(f"error: job {_safe(job_id)} is {before.status.value}; nothing to do", err=True)
        raise typer.Exit(EXIT_NOT_APPLICABLE)
    if not as_json:
        typer.echo(_safe(message))


@jobs_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a job: a waiting one at once, a running one within a heartbeat."""

    def accept(before: Job, after: Job) -> str | None:
        if before.is_finished:
            return None
        if after.status is JobStatus.RUNNING:
            return f"job {after.id}: cancel requested; its worker stops it within a heartbeat"
        return f"job {after.id}: cancelled"

    _change(job_id, app, url, as_json, lambda aw, i: aw.cancel(i), accept)


@jobs_app.command("retry")
def retry(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a failed or cancelled job again, with a fresh attempt budget."""

    def accept(before: Job, after: Job) -> str | None:
        if before.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            return None
        return f"job {after.id}: queued again"

    _change(job_id, app, url, as_json, lambda aw, i: aw.retry(i), accept)


def queues(
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Count each queue's jobs per state."""
    stats = _run(app, url, lambda aw: aw.stats())
    if as_json:
        _print_json(
            [
                {
                    "queue": s.queue,
                    "counts": {status.value: count for status, count in s.counts.items()},
                    "oldest_waiting_at": s.oldest_waiting_at,
                }
                for s in stats
            ]
        )
        return
    table = Table()
    table.add_column("queue")
    for status in JobStatus:
        table.add_column(status.value, justify="right", style=_STYLES[status])
    table.add_column("oldest waiting")
    for s in stats:
        table.add_row(
            Text(_safe(s.queue)),
            *(Text(str(s.counts.get(status, 0))) for status in JobStatus),
            Text(_when(s.oldest_waiting_at)),
        )
    _console().print(table)
    if not stats:
        typer.echo("no jobs")


def purge(
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", min=0, help="also delete jobs finished this many seconds ago"),
    ] = None,
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete finished jobs past their result TTL (or finished --older-than seconds ago)."""
    count = _run(app, url, lambda aw: aw.purge(older_than=older_than))
    if as_json:
        _print_json({"purged": count})
    else:
        typer.echo(f"purged {count} finished job(s)")
