"""``afterwork queues`` (counts per queue), ``afterwork queues pause|resume NAME``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._cli_jobs import AppOption, JsonOption, UrlOption, _run, queues

__all__ = ("queues_app",)

queues_app: typer.Typer = typer.Typer(
    name="queues",
    help="Count each queue's jobs per state; pause or resume a queue across the fleet.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _queue_name(value: str) -> str:
    from .task import queue_problem

    problem = queue_problem(value)
    if problem is not None:
        raise typer.BadParameter(f"a queue name {problem}")
    return value


NameArgument = Annotated[str, typer.Argument(help="the queue's name", callback=_queue_name)]


@queues_app.callback()
def list_queues(
    ctx: typer.Context,
    app: AppOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Count each queue's jobs per state (paused queues are marked)."""
    if ctx.invoked_subcommand is None:
        queues(app=app, url=url, as_json=as_json)


@queues_app.command()
def pause(name: NameArgument, app: AppOption = None, url: UrlOption = None) -> None:
    """Pause a queue: enqueues are accepted, no worker starts its jobs (running ones finish)."""
    _run(app, url, lambda aw: aw.pause(name))
    typer.echo(f"queue {name}: paused")


@queues_app.command()
def resume(name: NameArgument, app: AppOption = None, url: UrlOption = None) -> None:
    """Resume a paused queue: workers start its jobs again."""
    _run(app, url, lambda aw: aw.resume(name))
    typer.echo(f"queue {name}: resumed")
