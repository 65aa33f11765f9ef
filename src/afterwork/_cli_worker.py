"""``afterwork worker``'s body, without typer: a worker starts without the CLI framework.

``python -m afterwork worker app:aw`` (and the ``afterwork`` script) parse the plain form of
the worker command here (its options, each with a valid value) and start the worker at
once: typer, and the pydantic it builds its parameters with, cost more CPU than the rest
of the start-up together (docs/benchmarks.md, issue 18). Anything else (``--help``, another
command, ``--reload``, ``--processes``, a value the command would refuse) goes to the typer
application in :mod:`afterwork.cli`, which says what is wrong as it always did.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Afterwork

__all__ = ("CLIError", "configure_logging", "load_afterwork", "main", "run_worker", "serve")

logger: logging.Logger = logging.getLogger("afterwork.cli")


class CLIError(Exception):
    """A problem to report in one line, without a traceback."""


def configure_logging(level: str, log_format: str = "plain") -> None:
    """The CLI's log format (``plain`` or ``json``). Library code never configures logging.

    What ``logging.config.dictConfig`` did with one ``stderr`` handler on the ``afterwork``
    logger, without loading ``logging.config`` (and ``logging.handlers``, ``socketserver``,
    ``pickle``...) in every worker's start-up.

    Raises:
        ValueError: ``log_format`` is neither, or ``level`` is not a level.
    """
    if log_format not in ("plain", "json"):
        raise ValueError("--log-format is plain or json")
    if log_format == "json":
        from ._log_json import JsonFormatter

        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger("afterwork")
    with _logging_lock():
        root.setLevel(level.upper())
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.disabled = False
        # As dictConfig: the afterwork.* loggers pass their records up to it, unfiltered.
        for name, child in list(logging.Logger.manager.loggerDict.items()):
            if name.startswith("afterwork.") and isinstance(child, logging.Logger):
                child.setLevel(logging.NOTSET)
                child.handlers = []
                child.propagate = True
                child.disabled = False


class PlainFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)-7s %(name)s: %(message)s``, as ``logging.Formatter`` writes
    it, a line per job done at INFO made cheaper: the date and time formatted once per second,
    the line put together without the ``%``-style mapping (a traceback: the base class)."""

    _stamp: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)  # what ``time.localtime`` formats: the whole second
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (
                second,
                time.strftime(self.default_time_format, self.converter(second)),
            )
        return f"{stamp[1]},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = message = record.getMessage()
        record.asctime = asctime = self.formatTime(record, self.datefmt)
        return f"{asctime} {record.levelname:<7} {record.name}: {message}"


def _logging_lock() -> Any:
    """The logging module's lock, which dictConfig holds while it configures."""
    import contextlib

    lock = getattr(logging, "_lock", None)
    return lock if lock is not None else contextlib.nullcontext()


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


def serve(
    target: str,
    *,
    concurrency: int | None,
    queues: str | None,
    grace: float | None,
    name: str | None,
    isolation: str | None,
    metrics_port: int | None,
    metrics_host: str,
    health_port: int | None,
    health_host: str,
) -> int:
    """Load ``target`` and run its worker until stopped; the exit code (0, 1 or 2)."""
    import asyncio  # lazily: `afterwork --help` need not load it

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
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except Exception as exc:
        logger.critical("worker stopped on a fatal error: %s", exc, exc_info=True)
        return 1
    return 0


def _port(text: str) -> int | None:
    value = int(text)
    return value if 0 <= value <= 65535 else None


#: The worker command's options parsed here: (option, parameter, converter). A converter
#: returns ``None`` for a value the command would refuse (typer then says why).
_OPTIONS: dict[str, tuple[str, Any]] = {
    "--concurrency": ("concurrency", lambda text: value if (value := int(text)) >= 1 else None),
    "-c": ("concurrency", lambda text: value if (value := int(text)) >= 1 else None),
    "--queues": ("queues", str),
    "-q": ("queues", str),
    "--grace": ("grace", lambda text: value if (value := float(text)) >= 0 else None),
    "--name": ("name", str),
    "--log-level": ("log_level", str),
    "--log-format": ("log_format", lambda text: text if text in ("plain", "json") else None),
    "--metrics-port": ("metrics_port", _port),
    "--metrics-host": ("metrics_host", str),
    "--health-port": ("health_port", _port),
    "--health-host": ("health_host", str),
    "--isolation": ("isolation", lambda text: text if text in ("none", "process") else None),
}
_LEVELS = frozenset(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


def parse_worker(argv: Sequence[str]) -> dict[str, Any] | None:
    """``worker TARGET [OPTION VALUE]...`` as the command's parameters; ``None`` otherwise.

    ``None`` (typer parses it) for anything but the plain form: another command, ``--help``,
    ``--reload`` or ``--processes``, an option given twice, a value the command refuses.
    """
    if len(argv) < 2 or argv[0] != "worker":
        return None
    found: dict[str, Any] = {}
    target: str | None = None
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            if target is not None:
                return None
            target = arg
            continue
        option, equals, value = arg.partition("=")
        known = _OPTIONS.get(option)
        if known is None or (equals and not option.startswith("--")):
            return None
        if not equals:
            if not args:
                return None
            value = args.pop(0)
        parameter, convert = known
        try:
            converted = convert(value)
        except ValueError:
            return None
        if converted is None or parameter in found:
            return None
        found[parameter] = converted
    if target is None or found.get("log_level", "INFO").upper() not in _LEVELS:
        return None
    return {"target": target, **found}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m afterwork`` and the ``afterwork`` script."""
    parsed = parse_worker(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        from .cli import app

        app(args=None if argv is None else list(argv))
        return
    configure_logging(parsed.pop("log_level", "INFO"), parsed.pop("log_format", "plain"))
    defaults: dict[str, Any] = {
        "concurrency": None,
        "queues": None,
        "grace": None,
        "name": None,
        "isolation": None,
        "metrics_port": None,
        "metrics_host": "127.0.0.1",
        "health_port": None,
        "health_host": "127.0.0.1",
    }
    sys.exit(serve(**{**defaults, **parsed}))
