"""The ``afterwork`` command: run workers and look after jobs from a shell."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import _cli_worker
from ._cli_worker import CLIError as CLIError
from ._cli_worker import _side_ports as _side_ports
from ._cli_worker import load_afterwork as load_afterwork
from ._cli_worker import run_worker as run_worker

if TYPE_CHECKING:
    # Loaded by the commands that need it, so `afterwork --help` starts fast.
    from .app import Afterwork

__all__ = ("app", "load_afterwork", "main")

logger: logging.Logger = logging.getLogger("afterwork.cli")

app: typer.Typer = typer.Typer(
    name="afterwork",
    help="Reliable background work for FastAPI: run workers, inspect and steer jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from .__about__ import __version__

        typer.echo(f"afterwork {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """afterwork: run workers, inspect and steer jobs."""


def configure_logging(level: str, log_format: str = "plain") -> None:
    """The CLI's log format (``plain`` or ``json``). Library code never configures logging."""
    try:
        _cli_worker.configure_logging(level, log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="MODULE:ATTRIBUTE of your Afterwork instance")],
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="jobs run at once")
    ] = None,
    queues: Annotated[
        str | None, typer.Option("--queues", "-q", help="comma-separated queues (default: all)")
    ] = None,
    grace: Annotated[
        float | None, typer.Option(min=0, help="seconds running jobs get on SIGTERM")
    ] = None,
    name: Annotated[str | None, typer.Option(help="a name for this worker in logs")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
    log_format: Annotated[
        str, typer.Option(help="plain, or json: one object per line with the job's fields")
    ] = "plain",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="serve Prometheus metrics at /metrics on this port (0: any)"
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="the address --metrics-port listens on")
    ] = "127.0.0.1",
    health_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="answer /livez and /readyz (store reachable) on this port"
        ),
    ] = None,
    health_host: Annotated[
        str, typer.Option(help="the address --health-port listens on (0.0.0.0 for probes)")
    ] = "127.0.0.1",
    reload: Annotated[
        bool,
        typer.Option(
            "--reload", help="restart on changes to .py files here (development; needs watchfiles)"
        ),
    ] = False,
    isolation: Annotated[
        str | None,
        typer.Option(
            help="'process': run every job in a child process of a pool (docs/isolation.md)"
        ),
    ] = None,
    processes: Annotated[
        str | None,
        typer.Option(help="run N worker processes ('auto': one per core), restarted if they die"),
    ] = None,
) -> None:
    """Run jobs until SIGTERM/SIGINT (a second signal stops at once)."""
    configure_logging(log_level, log_format)
    if isolation not in (None, "none", "process"):
        typer.echo(f"error: --isolation must be 'process' or 'none', not {isolation!r}", err=True)
        raise typer.Exit(2)
    if reload and isolation is not None:
        typer.echo("error: --isolation cannot be combined with --reload", err=True)
        raise typer.Exit(2)
    if processes is not None:
        if health_port is not None:
            # A probe asks one port about one pod: per-process health ports would not say it.
            typer.echo("error: --health-port cannot be combined with --processes yet", err=True)
            raise typer.Exit(2)
        if reload:
            typer.echo("error: --processes cannot be combined with --reload", err=True)
            raise typer.Exit(2)
        from ._cli_processes import metrics_ports, processes_count, run_processes

        try:
            count = processes_count(processes)
            per_process = metrics_ports(metrics_port, metrics_host, count)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        args = [target, "--log-level", log_level, "--log-format", log_format]
        for flag, value in (
            ("--concurrency", concurrency),
            ("--queues", queues),
            ("--grace", grace),
            ("--name", name),
            ("--isolation", isolation),
        ):
            if value is not None:
                args += [flag, str(value)]
        raise typer.Exit(run_processes(args, count, per_process))
    if reload:
        from ._cli_reload import reload_worker

        reload_worker(target, concurrency, queues, grace, name, log_level)
        return
    code = _cli_worker.serve(
        target,
        concurrency=concurrency,
        queues=queues,
        grace=grace,
        name=name,
        isolation=isolation,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        health_port=health_port,
        health_host=health_host,
    )
    if code:
        raise typer.Exit(code)


async def _list_schedules(aw: Afterwork) -> list[dict[str, Any]]:
    async with aw:
        return [info.to_dict() for info in await aw.list_schedules()]


@app.command()
def schedules(
    target: Annotated[str, typer.Argument(help="MODULE:ATTRIBUTE of your Afterwork instance")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the schedules with their next and last run."""
    import asyncio  # lazily: `afterwork --help` need not load it

    try:
        aw = load_afterwork(target)
    except CLIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    rows = asyncio.run(_list_schedules(aw))
    from ._cli_schedules import print_schedules

    print_schedules(rows, as_json=as_json)


def _register() -> None:
    from ._cli_db import db_app
    from ._cli_jobs import jobs_app, purge, workers
    from ._cli_queues import queues_app

    app.add_typer(db_app)
    app.add_typer(jobs_app)
    app.add_typer(queues_app)
    app.command()(purge)
    app.command()(workers)


_register()


def main() -> None:
    """Entry point of the ``afterwork`` console script and ``python -m afterwork``.

    The plain ``worker`` command starts without typer's parsing (see ``_cli_worker``).
    """
    _cli_worker.main()
