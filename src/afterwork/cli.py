"""The ``afterwork`` command: run workers and look after jobs from a shell."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer

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


class CLIError(Exception):
    """A problem to report in one line, without a traceback."""


def configure_logging(level: str, log_format: str = "plain") -> None:
    """The CLI's log format (``plain`` or ``json``). Library code never configures logging."""
    import logging.config  # lazily: `afterwork --help` need not load it

    if log_format not in ("plain", "json"):
        raise typer.BadParameter("--log-format is plain or json")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
                "json": {"()": "afterwork._log_json.JsonFormatter"},
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": log_format,
                    "stream": "ext://sys.stderr",
                }
            },
            "loggers": {"afterwork": {"handlers": ["stderr"], "level": level.upper()}},
        }
    )


def load_afterwork(target: str) -> Afterwork:
    """Import ``module:attribute`` and return the :class:`Afterwork` it names.

    Raises:
        CLIError: in one line, whatever went wrong (see ``_cli_target``).
    """
    from ._cli_target import load_target

    return load_target(target, CLIError)


async def run_worker(
    aw: Afterwork,
    *,
    concurrency: int | None,
    queues: list[str] | None,
    grace: float | None,
    name: str | None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    health_port: int | None = None,
    health_host: str = "127.0.0.1",
) -> None:
    """Run the worker (and everything else ``aw.runtime`` runs) until SIGTERM or SIGINT.

    The first signal stops gracefully: nothing new is claimed, running jobs get ``grace``
    seconds, then are released. A second signal releases running jobs at once. With
    ``metrics_port``, Prometheus metrics are served at ``http://metrics_host:port/metrics``;
    with ``health_port``, ``/livez`` and ``/readyz`` (the store answers) on ``health_host``.
    """
    import asyncio  # lazily: `afterwork --help` need not load it

    if metrics_port is not None or health_port is not None:
        servers = await _side_ports(aw, metrics_port, metrics_host, health_port, health_host)
        try:
            await run_worker(aw, concurrency=concurrency, queues=queues, grace=grace, name=name)
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
        return
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    received = 0
    running: list[Any] = []  # the worker, once the runtime started it

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            logger.info(
                "received %s: stopping gracefully (send it again to stop at once)",
                signal.Signals(signum).name,
            )
            for worker in running:
                worker.stop()
            stopping.set()
        else:
            logger.warning("received %s again: stopping now", signal.Signals(signum).name)
            for worker in running:
                worker.stop(now=True)

    # Handled from before the worker starts: the worker logs "started" as the runtime
    # enters, and a SIGTERM sent on seeing that line must stop it gracefully, not kill the
    # process (it did, with the default action, while the handlers were not set yet).
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with (
            aw,
            aw.runtime(concurrency=concurrency, queues=queues, grace=grace, name=name) as worker,
        ):
            if worker is not None:
                running.append(worker)
                if received:  # a signal came while it started
                    worker.stop(now=received > 1)
            await stopping.wait()
            # The handlers stay while the runtime shuts down, so a second signal counts.
    finally:
        # Stopped: a signal that arrives while the process exits has nothing left to stop.
        # Held pending (and dropped at exit), it cannot end the exit in a KeyboardInterrupt
        # traceback and a non-zero code, as it would once the handlers are gone.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _side_ports(
    aw: Afterwork,
    metrics_port: int | None,
    metrics_host: str,
    health_port: int | None,
    health_host: str,
) -> list[Any]:
    """Start the metrics and health servers asked for; return them (close them to stop)."""
    from ._cli_http import Handler, serve_http

    servers: list[Any] = []
    plan: list[tuple[str, str, int, dict[str, Handler]]] = []
    if metrics_port is not None:
        from .metrics import CONTENT_TYPE, Metrics

        metrics = Metrics(aw)

        async def scrape() -> tuple[int, str, bytes]:
            return 200, CONTENT_TYPE, await metrics.exposition()

        plan.append(("metrics", metrics_host, metrics_port, {"/metrics": scrape}))
    if health_port is not None:

        async def live() -> tuple[int, str, bytes]:
            return 200, "text/plain; charset=utf-8", b"ok\n"

        async def ready() -> tuple[int, str, bytes]:
            import anyio

            try:
                with anyio.fail_after(2.0):
                    await aw.backend.get("afterwork-readiness-probe")
            except Exception as exc:
                text = f"store unreachable: {type(exc).__name__}\n".encode()
                return 503, "text/plain; charset=utf-8", text
            return 200, "text/plain; charset=utf-8", b"ok\n"

        plan.append(("health", health_host, health_port, {"/livez": live, "/readyz": ready}))
    try:
        for what, host, port, routes in plan:
            server = await serve_http(routes, host, port)
            servers.append(server)
            bound = server.sockets[0].getsockname()
            paths = ", ".join(routes)
            logger.info("%s served at http://%s:%d (%s)", what, bound[0], bound[1], paths)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


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
    import asyncio  # lazily: `afterwork --help` need not load it

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
    try:
        aw = load_afterwork(target)
        from ._cli_lost import warn_if_lost

        warn_if_lost(aw, target)
        if isolation is not None:
            import dataclasses

            aw.config = dataclasses.replace(aw.config, isolation=isolation)
        queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        asyncio.run(
            run_worker(
                aw,
                concurrency=concurrency,
                queues=queue_list,
                grace=grace,
                name=name,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                health_port=health_port,
                health_host=health_host,
            )
        )
    except CLIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:
        logger.critical("worker stopped on a fatal error: %s", exc, exc_info=True)
        raise typer.Exit(1) from None


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
    """Entry point of the ``afterwork`` console script and ``python -m afterwork``."""
    app()
