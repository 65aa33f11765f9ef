"""``afterwork jobs list|show|cancel|retry``, ``afterwork queues`` and ``afterwork purge``.

Each command finds the store from ``--app MODULE:ATTR`` (your :class:`Afterwork`), or
``--url``, or ``AFTERWORK_URL``, or the default SQLite file in the current directory.
Tables are for people; ``--json`` prints JSON for scripts.

Exit codes: 0 done; 1 no such job, or the job is in a state the command cannot change;
2 bad usage or configuration (including a missing store); 3 the store failed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ._cli_bulk import BulkFilters, DryRun, ErrorType, Since, Until, Yes, bulk
from ._cli_text import safe_block, safe_json, safe_line
from .exceptions import AfterworkError, BackendError
from .job import TERMINAL_STATUSES, Job, JobStatus

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .app import Afterwork
    from .backends.base import QueueStats, WorkerInfo

__all__ = ("jobs_app", "purge", "queues", "workers")

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
StatusFilter = Annotated[
    list[JobStatus] | None,
    typer.Option("--status", "-s", help="only jobs in this state (repeatable)"),
]
QueueFilter = Annotated[str | None, typer.Option("--queue", "-q", help="only this queue")]
TaskFilter = Annotated[str | None, typer.Option("--task", "-t", help="only this task")]

_STYLES = {
    JobStatus.SCHEDULED: "cyan",
    JobStatus.QUEUED: "blue",
    JobStatus.RUNNING: "yellow",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "magenta",
}


_SHORT = {
    JobStatus.SCHEDULED: "sched",
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "run",
    JobStatus.SUCCEEDED: "ok",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancel",
}


class Abort(Exception):
    """End the command with a one-line message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _store(app: str | None, url: str | None) -> Afterwork:
    from .app import DEFAULT_URL, Afterwork  # loaded here: `--help` need not pay for it
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
    import asyncio  # lazily: `afterwork --help` need not load it

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
    from rich.text import Text

    label = job.status.value + (" (cancelling)" if job.cancel_requested else "")
    return Text(label, style=_STYLES.get(job.status, ""))


def _print_store(where: str) -> None:
    """The header line: which store this is (a relative default path hides mistakes)."""
    typer.echo(f"store: {_safe(where)}")


def _print_json(data: Any) -> None:
    typer.echo(safe_json(data))


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


#: Below this many columns, tables drop their least needed columns instead of wrapping.
WIDE = 120


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _print_jobs(jobs: list[Job]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = _console()
    wide = console.width >= WIDE
    # One line per job at any width: the id is always whole (``jobs show`` takes it), long
    # task names and errors end in "…", and narrow terminals drop queue and created.
    rows: list[dict[str, Text]] = []
    for job in jobs:
        error = "" if job.error is None else f"{job.error.type}: {job.error.message}"
        rows.append(
            {
                "id": Text(_safe(job.id)),
                "task": Text(_safe(job.task)),
                "queue": Text(_safe(job.queue)),
                "status": _status(job),
                "tries": Text(f"{job.attempts}/{job.max_attempts}"),
                "created": Text(_when(job.created_at)),
                "error": Text(_safe(error)[:500]),
            }
        )
    names = ["id", "task", "queue", "status", "tries", "created", "error"]
    if not wide:
        names = [name for name in names if name not in ("queue", "created")]
    natural = {name: max([len(name), *(row[name].cell_len for row in rows)]) for name in names}
    if "queue" in natural:
        natural["queue"] = min(natural["queue"], 20)
    # Columns are three characters apart; the last character of a line stays free.
    room = console.width - 1 - 3 * (len(names) - 1)
    fixed = sum(width for name, width in natural.items() if name not in ("task", "error"))
    flexible = max(room - fixed, 16)
    task = min(natural["task"], max(12, flexible * 2 // 5))
    widths = {**natural, "task": task, "error": max(flexible - task, 5)}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in names:
        table.add_column(
            name,
            width=widths[name],
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if name == "tries" else "left",
        )
    for row in rows:
        table.add_row(*(row[name] for name in names))
    console.print(table)
    if not jobs:
        typer.echo("no jobs")


def _print_job(job: Job) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    fields: list[tuple[str, Any]] = [
        ("id", job.id),
        ("task", job.task),
        ("queue", job.queue),
        ("status", None),
        ("waiting", job.waiting_reason),
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
    if job.timeline:
        console.print(_timeline(job))
    if job.error is not None and job.error.traceback:
        console.print(Text("\n" + safe_block(job.error.traceback), style="dim"))


def _timeline(job: Job) -> Table:
    """The job's kept attempts, oldest first: when, where, how long, how it ended."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="attempts", title_justify="left", box=None)
    for name in ("#", "started", "took", "worker", "outcome", "error"):
        table.add_column(name)
    for attempt in job.timeline:
        took = attempt.duration
        error = attempt.error
        table.add_row(
            str(attempt.number),
            _when(attempt.started_at),
            "" if took is None else f"{took:.3f}s",
            Text(_safe(attempt.worker)),
            attempt.outcome,
            Text(_safe(None if error is None else f"{error.type}: {error.message}")[:500]),
        )
    return table


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

    async def action(aw: Afterwork) -> tuple[list[Job], str]:
        jobs = await aw.list_jobs(
            status=status or None, queue=queue, task=task, before=before, limit=limit
        )
        return jobs, aw.location

    jobs, where = _run(app, url, action)
    if as_json:
        _print_json([job.to_dict() for job in jobs])
    else:
        _print_store(where)
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
    job_id: Annotated[str | None, typer.Argument(help="the job's id (or filter instead)")] = None,
    status: StatusFilter = None,
    queue: QueueFilter = None,
    task: TaskFilter = None,
    error_type: ErrorType = None,
    since: Since = None,
    until: Until = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a job: a waiting one at once, a running one within a heartbeat.

    Without an id, cancel every job matching the filters (the count is shown first).
    """
    filters = BulkFilters(status, queue, task, error_type, since, until)
    if job_id is None or filters.given:
        if job_id is not None or not filters.given:
            raise typer.BadParameter("give a job id, or filters (--status, --task, ...)")

        async def act(aw: Afterwork, i: str) -> bool:
            after = await aw.cancel(i)
            return after is not None and (
                after.status is JobStatus.CANCELLED or after.cancel_requested
            )

        from ._bulk import CANCELLABLE

        bulk("cancelled", CANCELLABLE, filters, act, app=app, url=url, dry_run=dry_run,
             yes=yes, as_json=as_json)  # fmt: skip
        return

    def accept(before: Job, after: Job) -> str | None:
        if before.is_finished:
            return None
        if after.status is JobStatus.RUNNING:
            return f"job {after.id}: cancel requested; its worker stops it within a heartbeat"
        return f"job {after.id}: cancelled"

    _change(job_id, app, url, as_json, lambda aw, i: aw.cancel(i), accept)


@jobs_app.command("retry")
def retry(
    job_id: Annotated[str | None, typer.Argument(help="the job's id (or filter instead)")] = None,
    status: StatusFilter = None,
    queue: QueueFilter = None,
    task: TaskFilter = None,
    error_type: ErrorType = None,
    since: Since = None,
    until: Until = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a failed or cancelled job again, with a fresh attempt budget.

    Without an id, retry every job matching the filters (the count is shown first):
    ``afterwork jobs retry --status failed --task T --since 1h``.
    """
    filters = BulkFilters(status, queue, task, error_type, since, until)
    if job_id is None or filters.given:
        if job_id is not None or not filters.given:
            raise typer.BadParameter("give a job id, or filters (--status, --task, ...)")

        async def act(aw: Afterwork, i: str) -> bool:
            after = await aw.retry(i)
            return after is not None and after.status is JobStatus.QUEUED

        from ._bulk import RETRYABLE

        bulk("retried", RETRYABLE, filters, act, app=app, url=url, dry_run=dry_run,
             yes=yes, as_json=as_json)  # fmt: skip
        return

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
    from rich import box
    from rich.table import Table
    from rich.text import Text

    async def action(aw: Afterwork) -> tuple[list[QueueStats], frozenset[str], float, str]:
        return await aw.stats(), await aw.paused_queues(), aw.backend.now(), aw.location

    stats, paused, now, where = _run(app, url, action)
    if as_json:
        _print_json(
            [
                {
                    "queue": s.queue,
                    "counts": {status.value: count for status, count in s.counts.items()},
                    "oldest_waiting_at": s.oldest_waiting_at,
                    "paused": s.queue in paused,
                }
                for s in stats
            ]
        )
        return
    _print_store(where)
    console = _console()
    wide = console.width >= WIDE
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("queue", overflow="fold")
    for status in JobStatus:
        # Narrow terminals get short headers, so no count is ever cut.
        header = status.value if wide else _SHORT[status]
        table.add_column(header, justify="right", style=_STYLES[status], no_wrap=True)
    table.add_column("oldest waiting" if wide else "waited", no_wrap=True)
    for s in stats:
        waited = s.oldest_waiting_at
        if waited is None:
            oldest = ""
        elif wide:
            oldest = _when(waited)
        else:
            oldest = _age(now - waited)
        table.add_row(
            Text(_safe(s.queue) + (" (paused)" if s.queue in paused else "")),
            *(Text(str(s.counts.get(status, 0))) for status in JobStatus),
            Text(oldest),
        )
    console.print(table)
    if paused:
        console.print(Text("paused: " + ", ".join(_safe(q) for q in sorted(paused))))
    if not stats:
        typer.echo("no jobs")


async def _purgeable(aw: Afterwork, older_than: float | None) -> int:
    """How many jobs ``aw.purge(older_than=...)`` would delete now (for ``--dry-run``)."""
    now = aw.backend.now()
    count = 0
    before: str | None = None
    while True:
        page = await aw.list_jobs(status=TERMINAL_STATUSES, before=before, limit=1000)
        for job in page:
            finished = job.finished_at
            if finished is None:
                continue
            expired = job.result_ttl is not None and finished + job.result_ttl <= now
            old = older_than is not None and finished <= now - older_than
            count += expired or old
        if len(page) < 1000:
            return count
        before = page[-1].id


def purge(
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", min=0, help="also delete jobs finished this many seconds ago"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only count what would be deleted")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="delete without asking")] = False,
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete finished jobs past their result TTL (or finished --older-than seconds ago).

    Asks first, in a terminal; elsewhere (scripts, CI) it needs --yes.
    """
    pending = _run(app, url, lambda aw: _purgeable(aw, older_than))
    if dry_run:
        if as_json:
            _print_json({"would_purge": pending})
        else:
            typer.echo(f"would purge {pending} finished job(s); nothing was deleted")
        return
    if pending and not yes:
        if not sys.stdin.isatty():
            typer.echo(
                f"error: purge would delete {pending} finished job(s); pass --yes to confirm "
                "(or --dry-run to only count them)",
                err=True,
            )
            raise typer.Exit(EXIT_USAGE)
        if not typer.confirm(f"Delete {pending} finished job(s)?", default=False, err=True):
            typer.echo("nothing was deleted", err=True)
            raise typer.Exit(EXIT_NOT_APPLICABLE)
    count = _run(app, url, lambda aw: aw.purge(older_than=older_than))
    if as_json:
        _print_json({"purged": count})
    else:
        typer.echo(f"purged {count} finished job(s)")


def workers(
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the live workers: host, pid, queues, what they run, when last seen.

    ``services`` lists the ``@aw.service`` services each worker's process runs (a singleton
    only in the process holding its lease).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    async def action(aw: Afterwork) -> tuple[list[WorkerInfo], float, str]:
        return await aw.workers(), aw.backend.now(), aw.location

    found, now, where = _run(app, url, action)
    if as_json:
        _print_json([w.to_dict() for w in found])
        return
    _print_store(where)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("id", "host", "pid", "queues", "running", "services", "up", "seen"):
        table.add_column(name, overflow="fold")
    for w in found:
        table.add_row(
            Text(_safe(w.id)),
            Text(_safe(w.host)),
            str(w.pid),
            Text(_safe("all" if w.queues is None else ",".join(w.queues))),
            f"{len(w.running)}/{w.concurrency}",
            Text(_safe(",".join(w.services))),
            _age(now - w.started_at),
            _age(now - w.last_seen) + " ago",
        )
    _console().print(table)
    if not found:
        typer.echo("no live workers")
