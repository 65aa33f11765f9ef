"""Supervised long-running services: ``@aw.service``.

A service is a coroutine function that runs for as long as the process does (a message-bus
consumer, a cache warmer, a status updater). ``aw.runtime()`` (so ``aw.lifespan`` and
``afterwork worker``) starts each one, keeps it running and stops it.

Contract (what holds even on failure):

* Each run of a service is an asyncio task named ``afterwork service <name>``, held by
  the :class:`ServiceSupervisor` of its :class:`~afterwork.Afterwork` instance (a strong
  reference: it is never garbage-collected mid-run), and supervised from the runtime's
  task group.
* Readiness: the runtime yields (the app starts serving) only once every service has
  started. A service has started when it calls ``ctx.ready()`` or, unless it was declared
  with ``ready="explicit"``, when it first suspends (its first ``await`` that waits). A
  service that raises before it has started, or does not call ``ctx.ready()`` within
  ``startup_timeout``, fails the runtime with :class:`~afterwork.exceptions.ServiceStartError`.
* A service that raises after it started has crashed: the crash is logged once with its
  traceback and, as its ``restart`` policy says, it is started again after a capped
  exponential backoff. Its status is ``aw.services``.
* On shutdown every service's stop signal is set and its task cancelled, then awaited at
  most ``shutdown_timeout`` seconds. One that does not stop in time is abandoned (still
  referenced, so it is not collected) and logged; one that raised while stopping is logged
  with its traceback. Shutdown never waits longer than the largest ``shutdown_timeout``.
* Cancellation of the runtime itself propagates; it is never swallowed.

Singletons (``singleton=True``): one instance across every process sharing the store.

* A singleton runs only while this process holds the store lease ``service:<name>``
  (:class:`~afterwork.backends.base.Leases`), acquired with a fencing token and renewed
  every third of its ``lease_ttl``. A process that does not hold it is ``standby`` and
  tries again every fifth of ``lease_ttl``; a standby singleton counts as started.
* The holder stops its run (cancelled, logged ``service_lease_lost``) as soon as the
  store refuses a renewal, or once nine tenths of ``lease_ttl`` have passed since the
  last renewal it sent that succeeded (the store unreachable): it stops before its lease
  can expire in the store, so two processes run it at once only if a run takes more than
  that tenth to stop or the clocks disagree. It then stands by again.
* The lease is kept while the runtime runs, across restarts of the service (and after it
  ended for good here); a graceful stop releases it at once, so a standby process takes
  over within a poll; a process that dies is replaced within ``lease_ttl`` plus a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
from anyio.abc import TaskStatus

from .. import _signature
from ..backends.base import Leases, WorkerPresence
from ..exceptions import ConfigurationError, ServiceStartError
from ..job import JobError
from ..retry import Backoff, ExponentialBackoff
from . import dependencies

if TYPE_CHECKING:
    from .host import Host

__all__ = (
    "ContextFactory",
    "Readiness",
    "Restart",
    "ServiceInstance",
    "ServiceSpec",
    "ServiceState",
    "ServiceStatus",
    "ServiceSupervisor",
    "service_instances",
)

# The logger keeps the name it had when this module was ``afterwork.services``.
logger: logging.Logger = logging.getLogger("afterwork.services")

#: When a service that ended is started again.
Restart = Literal["always", "on-failure", "never"]
#: How a service tells the runtime it has started (see the module docstring).
Readiness = Literal["auto", "explicit"]

#: A run that lasted this long resets the backoff: the next crash restarts it quickly.
STABLE_AFTER = 60.0

#: A singleton's lease is renewed every ``lease_ttl / RENEW_PER_TTL`` seconds …
RENEW_PER_TTL = 3
#: … and a standby process tries to take it every ``lease_ttl / POLL_PER_TTL`` seconds.
POLL_PER_TTL = 5


def lease_name(service: str) -> str:
    """The store lease a singleton service runs under."""
    return f"service:{service}"


class ServiceState(StrEnum):
    """Where a service is in its life."""

    PENDING = "pending"
    """Declared; the runtime has not started it."""
    STARTING = "starting"
    RUNNING = "running"
    STANDBY = "standby"
    """A singleton another process runs: this one waits to take over its lease."""
    RESTARTING = "restarting"
    """Ended (crashed, or returned with ``restart="always"``); waiting out its backoff."""
    STOPPING = "stopping"
    STOPPED = "stopped"
    """Returned, or stopped at shutdown."""
    FAILED = "failed"
    """Crashed and its policy does not restart it."""


class ContextFactory(Protocol):
    """Builds the context a service run receives (``afterwork.ServiceContext``).

    The facade provides it, so the engine never names the ``Afterwork`` type that the
    context carries.
    """

    def __call__(
        self, name: str, *, restarts: int, stop: anyio.Event, on_ready: Callable[[], None]
    ) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A declared service (what ``@aw.service`` records)."""

    name: str
    func: Callable[..., Awaitable[Any]]
    restart: Restart = "on-failure"
    backoff: Backoff = ExponentialBackoff(base=1.0, cap=60.0)
    ready: Readiness = "auto"
    startup_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    singleton: bool = False
    """One instance across every process sharing the store (see the module docstring)."""
    lease_ttl: float | None = None
    """A singleton's lease, in seconds; ``None``: the instance's ``lease_ttl`` setting."""
    injected: tuple[_signature.Injected, ...] = ()

    @classmethod
    def of(cls, func: Callable[..., Awaitable[Any]], **options: Any) -> ServiceSpec:
        """Check ``func`` and its options; find the parameters afterwork fills in."""
        name = options.pop("name", None) or f"{func.__module__}:{func.__qualname__}"
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"service {name}: a service must be an async def function")
        if options.get("restart", "on-failure") not in ("always", "on-failure", "never"):
            raise ConfigurationError(
                f"service {name}: restart must be 'always', 'on-failure' or 'never'"
            )
        if options.get("ready", "auto") not in ("auto", "explicit"):
            raise ConfigurationError(f"service {name}: ready must be 'auto' or 'explicit'")
        for option in ("startup_timeout", "shutdown_timeout"):
            if options.get(option, 1.0) <= 0:
                raise ConfigurationError(f"service {name}: {option} must be positive")
        if options.get("lease_ttl") is not None:
            if not options.get("singleton"):
                raise ConfigurationError(f"service {name}: lease_ttl applies to singletons only")
            if options["lease_ttl"] <= 0:
                raise ConfigurationError(f"service {name}: lease_ttl must be positive")
        if options.get("backoff") is None:
            options.pop("backoff", None)
        return cls(name=name, func=func, injected=_injected(func, name), **options)

    def restart_delay(self, crashes: int, rng: Any) -> float:
        """Seconds to wait before the next start after ``crashes`` consecutive failures."""
        return self.backoff.delay(max(crashes, 1), rng)


def _injected(func: Callable[..., Any], name: str) -> tuple[_signature.Injected, ...]:
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise TypeError(f"service {name}: cannot resolve its annotations: {exc}") from exc
    found: list[_signature.Injected] = []
    for param in inspect.signature(func).parameters.values():
        annotation = hints.get(param.name, Any)
        injected = next(
            (i for hook in _signature.INJECTORS if (i := hook(param, annotation)) is not None),
            None,
        )
        if injected is None:
            if param.default is inspect.Parameter.empty and param.kind not in (
                param.VAR_POSITIONAL,
                param.VAR_KEYWORD,
            ):
                raise TypeError(
                    f"service {name}: parameter {param.name!r} has no value; a service may "
                    "only take a ServiceContext (by annotation) or parameters with defaults"
                )
            continue
        if injected.kind not in ("service_context", "dependency"):
            raise TypeError(
                f"service {name}: parameter {param.name!r} cannot be injected into a service "
                f"(kind {injected.kind!r}); services take a ServiceContext and Depends(...)"
            )
        found.append(injected)
    return tuple(found)


async def _arguments(
    spec: ServiceSpec,
    ctx: Any,
    stack: contextlib.AsyncExitStack,
    overrides: typing.Mapping[Callable[..., Any], Callable[..., Any]],
) -> dict[str, Any]:
    """Values of the injected parameters for one run (``stack`` cleans up after the run).

    FastAPI ``Depends`` parameters are resolved afresh for every run (a restart gets new
    ones), with the served app's ``dependency_overrides``; generator dependencies are torn
    down when the run ends, in reverse order, seeing the exception that ended it.
    """
    values: dict[str, Any] = {i.name: ctx for i in spec.injected if i.kind == "service_context"}
    plans = {i.name: i.spec for i in spec.injected if i.kind == "dependency"}
    if plans:
        values.update(
            await dependencies.resolve(
                plans,
                stack,
                overrides=overrides,
                provide={type(ctx): ctx},
            )
        )
    return values


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    """A service as ``aw.services`` reports it."""

    name: str
    state: ServiceState
    restart: Restart
    restarts: int
    """Times it was started again after it ended."""
    crashes: int
    """Times it raised (at startup, while running, or while stopping)."""
    last_error: JobError | None
    started_at: float | None
    """When the current run started (seconds since the epoch), if it is running."""
    uptime: float | None
    """Seconds the current run has been going, if it is running."""
    singleton: bool = False
    """Declared with ``singleton=True``: at most one process runs it (it holds the lease)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "name": self.name,
            "state": self.state.value,
            "restart": self.restart,
            "restarts": self.restarts,
            "crashes": self.crashes,
            "last_error": None if self.last_error is None else self.last_error.to_dict(),
            "started_at": self.started_at,
            "uptime": self.uptime,
            "singleton": self.singleton,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceInstance:
    """One process running a service (``aw.service_instances()``).

    Found in this process's own supervisor, in the presence records of the workers
    sharing the store (each lists the services its process runs) and, for singletons, in
    the store lease's holder.
    """

    service: str
    host: str
    pid: int
    singleton: bool
    local: bool
    """This process (its ``state`` is exact; other processes' are ``running``)."""
    state: ServiceState
    since: float | None = None
    """When this process started running it, or took its lease, if known."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "service": self.service,
            "host": self.host,
            "pid": self.pid,
            "singleton": self.singleton,
            "local": self.local,
            "state": self.state.value,
            "since": self.since,
        }


class _Service:
    """One service's supervision: its runs, restarts and status."""

    def __init__(self, spec: ServiceSpec, supervisor: ServiceSupervisor) -> None:
        self.spec = spec
        self.supervisor = supervisor
        self.state = ServiceState.PENDING
        self.restarts = 0
        self.crashes = 0
        self.last_error: JobError | None = None
        self.started_at: float | None = None
        self._started_mono: float | None = None
        self.task: asyncio.Task[Any] | None = None
        self.stop_event = anyio.Event()
        """Set to end the current tenure (shutdown, or a singleton's lease lost)."""
        self._shutdown = anyio.Event()
        self._changed = anyio.Event()
        self._consecutive = 0  # crashes in a row (a stable run resets it)
        self.lease_acquired_at: float | None = None
        self._lease_errors = 0  # store errors about the lease in a row (logged once)
        """When this process took the singleton's lease (store clock), while it holds it."""

    def status(self) -> ServiceStatus:
        running = self.state is ServiceState.RUNNING and self._started_mono is not None
        return ServiceStatus(
            name=self.spec.name,
            state=self.state,
            restart=self.spec.restart,
            restarts=self.restarts,
            crashes=self.crashes,
            last_error=self.last_error,
            started_at=self.started_at if running else None,
            uptime=self.supervisor.host.clock.now() - self._started_mono
            if running and self._started_mono is not None
            else None,
            singleton=self.spec.singleton,
        )

    def _notify(self) -> None:
        self._changed.set()

    def _mark_ready(self) -> None:
        if self.state is ServiceState.STARTING:
            self.state = ServiceState.RUNNING
            self.started_at = self._started_mono = self.supervisor.host.clock.now()
            self._notify()

    def request_stop(self) -> None:
        self._shutdown.set()
        self.stop_event.set()
        self._notify()

    async def _call(self, ctx: Any) -> None:
        overrides = self.supervisor.host.dependency_overrides()
        async with contextlib.AsyncExitStack() as stack:
            kwargs = await _arguments(self.spec, ctx, stack, overrides)
            await self.spec.func(**kwargs)

    def _spawn(self) -> asyncio.Task[Any]:
        ctx = self.supervisor.make_context(
            self.spec.name,
            restarts=self.restarts,
            stop=self.stop_event,
            on_ready=self._mark_ready,
        )
        self.state = ServiceState.STARTING
        task = asyncio.get_running_loop().create_task(
            self._call(ctx), name=f"afterwork service {self.spec.name}"
        )
        task.add_done_callback(lambda _: self._notify())
        self.task = task
        return task

    async def _wait_change(self, timeout: float = float("inf")) -> None:
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()
        if changed is self._changed and changed.is_set():
            self._changed = anyio.Event()

    async def _start(self, task: asyncio.Task[Any]) -> None:
        """Wait until the run has started; raise ServiceStartError if it could not."""
        if self.spec.ready == "auto":
            # A new task runs its first step before this one resumes (FIFO ready queue):
            # afterwards it has either suspended at its first await, returned or raised.
            await asyncio.sleep(0)
            if not task.done():
                self._mark_ready()
        with anyio.move_on_after(self.spec.startup_timeout):
            while self.state is ServiceState.STARTING and not task.done():
                await self._wait_change()
        if task.done():
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self._record_crash(error)
                self.state = ServiceState.FAILED
                raise ServiceStartError(
                    f"service {self.spec.name} failed to start: {error!r}", service=self.spec.name
                ) from error
            self._mark_ready()  # returned at once: it started and ended
        elif self.state is ServiceState.STARTING:
            await self._stop_task(task)
            self.state = ServiceState.FAILED
            raise ServiceStartError(
                f"service {self.spec.name} did not call ctx.ready() within "
                f"{self.spec.startup_timeout:g}s",
                service=self.spec.name,
            )

    def _record_crash(self, error: BaseException) -> None:
        self.crashes += 1
        self.last_error = JobError.from_exception(error)

    async def supervise(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the service until stopped, restarting it as its policy says."""
        if self.spec.singleton:
            await self._supervise_singleton(task_status)
        else:
            await self._supervise_runs(task_status)

    async def _supervise_runs(
        self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED, *, first: bool = True
    ) -> None:
        """Run and restart the service until ``stop_event`` is set (or it ends for good).

        ``first``: the runtime waits for this start (a failure raises ServiceStartError).
        """
        try:
            while not self.stop_event.is_set():
                task = self._spawn()
                if first:
                    await self._start(task)
                    task_status.started()
                    first = False
                    self._log_info("started", "service_started")
                else:
                    await self._ready_if_auto(task)
                if not await self._wait_run(task):
                    break  # stopping: the finally clause cancels it
                delay = self._after_run(task)
                if delay is None or not await self._back_off(delay):
                    break
                self.restarts += 1
        finally:
            await self._cleanup()

    # -- singletons ----------------------------------------------------------------------

    async def _supervise_singleton(self, task_status: TaskStatus[None]) -> None:
        """Stand by until this process holds the lease; run the service while it does."""
        leases = self.supervisor.leases(self.spec)
        ttl = self.spec.lease_ttl or self.supervisor.host.config.lease_ttl
        name = lease_name(self.spec.name)
        once = _Once(task_status)
        try:
            while not self._shutdown.is_set():
                taken = await self._acquire(leases, name, ttl, once)
                if taken is None:
                    break
                token, sent = taken
                lost = anyio.Event()
                failure: ServiceStartError | None = None
                try:
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._keep_lease, leases, name, token, ttl, sent, lost)
                        try:
                            # A start failure fails the runtime only while it is starting;
                            # after a takeover, it is a crash like any other.
                            await self._supervise_runs(once, first=not once.done)
                            # Ended for good here (returned, or failed): keep the lease, so
                            # no other process starts it, until the runtime stops or it is lost.
                            while not self.stop_event.is_set():
                                await self._wait_change()
                        except ServiceStartError as exc:
                            failure = exc
                        finally:
                            group.cancel_scope.cancel()
                finally:
                    self.lease_acquired_at = None
                    if not lost.is_set():
                        with anyio.move_on_after(5, shield=True):
                            await self._release(leases, name, token)
                if failure is not None:
                    raise failure
                if lost.is_set() and not self._shutdown.is_set():
                    self.stop_event = anyio.Event()  # a new tenure, once the lease is back
                    self.state = ServiceState.STANDBY
                    self._notify()
            once.started()  # stopped before it ever started (nothing to wait for)
        finally:
            if self.state is not ServiceState.FAILED:
                self.state = ServiceState.STOPPED

    def _holder(self) -> str:
        return self.supervisor.holder

    async def _acquire(
        self, leases: Leases, name: str, ttl: float, status: _Once
    ) -> tuple[str, float] | None:
        """Take the lease, standing by meanwhile: its token and when the request was sent
        (by the engine's clock); ``None`` once shutdown began.

        ``status`` (the runtime waiting for this service to start) is told at the first
        failed attempt: a standby singleton has started.
        """
        clock = self.supervisor.host.clock
        while not self._shutdown.is_set():
            sent = clock.now()
            try:
                token = await leases.acquire_lease(name, self._holder(), ttl=ttl)
            except Exception as exc:
                token = None
                self._lease_error("could not try to take its lease", exc)
            else:
                self._lease_errors = 0
            if token is not None:
                self.lease_acquired_at = self.supervisor.host.backend.now()
                self._log_info("took its lease; it runs in this process", "service_lease_taken")
                return token, sent
            if self.state is not ServiceState.STANDBY:
                self.state = ServiceState.STANDBY
                self._log_info("is held by another process; standing by", "service_standby")
                self._notify()
            status.started()
            with clock.move_on_after(ttl / POLL_PER_TTL):
                await self._shutdown.wait()
        return None

    async def _keep_lease(
        self, leases: Leases, name: str, token: str, ttl: float, sent: float, lost: anyio.Event
    ) -> None:
        """Renew the lease until cancelled; stop the run as soon as it may be lost.

        The run stops when the store refuses a renewal, or at ``deadline``: a tenth of the
        lease before it could expire in the store (counted from the last renewal sent that
        succeeded), so a standby process cannot take over while this one still runs.
        """
        clock = self.supervisor.host.clock
        interval, margin = ttl / RENEW_PER_TTL, ttl / 10
        deadline = sent + ttl - margin
        due = sent + interval
        reason = ""
        while not reason:
            await clock.sleep_until(min(due, deadline))
            if clock.now() >= deadline:
                reason = f"it could not be renewed within its {ttl:g}s lease"
                break
            sent = clock.now()
            due = sent + interval
            renewed: bool | None = None
            with clock.move_on_at(deadline):
                try:
                    renewed = await leases.renew_lease(name, token, ttl=ttl)
                except Exception as exc:
                    self._lease_error("could not renew its lease", exc)
                else:
                    self._lease_errors = 0
            if renewed:
                deadline = sent + ttl - margin
            elif renewed is False:
                reason = "the store says another process holds it (or it expired)"
        lost.set()
        logger.warning(
            "service %s lost its lease: %s; stopping it in this process",
            self.spec.name,
            reason,
            extra={"action": "service_lease_lost", "service": {"name": self.spec.name}},
        )
        self.stop_event.set()
        self._notify()

    def _lease_error(self, what: str, exc: Exception) -> None:
        """Log a store error about the lease: the first of a run at WARNING, then DEBUG."""
        self._lease_errors += 1
        level = logging.WARNING if self._lease_errors == 1 else logging.DEBUG
        logger.log(
            level,
            "service %s %s: %r (further errors in a row are logged at DEBUG)",
            self.spec.name,
            what,
            exc,
            extra={"action": "service_lease_error", "service": {"name": self.spec.name}},
        )

    async def _release(self, leases: Leases, name: str, token: str) -> None:
        try:
            await leases.release_lease(name, token)
        except Exception:  # it expires with its ttl anyway
            logger.debug("service %s could not release its lease", self.spec.name, exc_info=True)
        else:
            self._log_info("released its lease", "service_lease_released")

    async def _ready_if_auto(self, task: asyncio.Task[Any]) -> None:
        if self.spec.ready == "auto":
            await asyncio.sleep(0)  # the new task runs its first step (see _start)
            if not task.done():
                self._mark_ready()

    async def _wait_run(self, task: asyncio.Task[Any]) -> bool:
        """Wait until the run ends (``True``) or shutdown begins (``False``)."""
        while not task.done() and not self.stop_event.is_set():
            await self._wait_change()
        return task.done()

    def _after_run(self, task: asyncio.Task[Any]) -> float | None:
        """Record how a run ended; the delay before the next run, ``None`` to stay down."""
        spec = self.spec
        began = self._started_mono
        self.started_at = self._started_mono = None
        error: BaseException | None
        if task.cancelled():
            error = asyncio.CancelledError("the service was cancelled from outside")
        else:
            error = task.exception()
        if error is None and spec.restart != "always":
            self.state = ServiceState.STOPPED
            self._log_info("returned", "service_returned")
            return None
        now = self.supervisor.host.clock.now()
        stable = began is not None and now - began >= STABLE_AFTER
        self._consecutive = 1 if stable else self._consecutive + 1
        if error is not None:
            self._record_crash(error)
        if spec.restart == "never":
            self.state = ServiceState.FAILED
            logger.error(
                "service %s crashed; it is not restarted (restart='never')",
                spec.name,
                exc_info=error,
                extra={"action": "service_crashed", "service": {"name": spec.name}},
            )
            return None
        delay = spec.restart_delay(self._consecutive, self.supervisor.host.rng)
        self.state = ServiceState.RESTARTING
        if error is not None:
            logger.error(
                "service %s crashed; restarting in %.2fs",
                spec.name,
                delay,
                exc_info=error,
                extra={"action": "service_crashed", "service": {"name": spec.name}},
            )
        else:
            logger.info(
                "service %s returned; restarting in %.2fs (restart='always')",
                spec.name,
                delay,
                extra={"action": "service_returned", "service": {"name": spec.name}},
            )
        return delay

    async def _back_off(self, delay: float) -> bool:
        """Wait ``delay`` before a restart; ``False`` if shutdown began meanwhile."""
        with self.supervisor.host.clock.move_on_after(delay):
            await self.stop_event.wait()
        return not self.stop_event.is_set()

    async def _cleanup(self) -> None:
        """Stop the current run if it still runs; settle the final state."""
        current = self.task
        if current is not None and not current.done():
            with anyio.CancelScope(shield=True):
                await self._stop_task(current)
        if self.state is not ServiceState.FAILED:
            self.state = ServiceState.STOPPED
        self.started_at = self._started_mono = None

    def _log_info(self, what: str, action: str) -> None:
        name = self.spec.name
        logger.info(
            "service %s %s", name, what, extra={"action": action, "service": {"name": name}}
        )

    async def _stop_task(self, task: asyncio.Task[Any]) -> None:
        """Cancel a run and wait for it at most ``shutdown_timeout``; log what went wrong."""
        name = self.spec.name
        self.state = ServiceState.STOPPING
        self.stop_event.set()
        task.cancel()
        with anyio.move_on_after(self.spec.shutdown_timeout):
            while not task.done():
                await self._wait_change()
        if not task.done():
            self.supervisor.abandoned.add(task)
            task.add_done_callback(self.supervisor.abandoned.discard)
            logger.error(
                "service %s did not stop within %gs of being cancelled; abandoned",
                name,
                self.spec.shutdown_timeout,
                extra={"action": "service_abandoned", "service": {"name": name}},
            )
            return
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._record_crash(error)
            logger.error(
                "service %s raised while stopping",
                name,
                exc_info=error,
                extra={"action": "service_stop_failed", "service": {"name": name}},
            )
        else:
            logger.info(
                "service %s stopped",
                name,
                extra={"action": "service_stopped", "service": {"name": name}},
            )


#: The states in which a process counts as running an instance of a service.
_LIVE = (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.RESTARTING)


async def service_instances(supervisor: ServiceSupervisor) -> list[ServiceInstance]:
    """Every process running a service: this one, singletons' lease holders, and the
    services listed in the presence records of live workers (see :class:`ServiceInstance`).

    A singleton's instance is its lease holder only (presence may lag a takeover by a
    heartbeat); a process that runs services but no worker is seen only by itself, and by
    everyone as the holder of the singletons it runs.
    """
    backend = supervisor.host.backend
    singletons = {name for name, spec in supervisor.specs.items() if spec.singleton}
    found = supervisor.local_instances()
    if isinstance(backend, Leases):
        prefix = lease_name("")
        for lease in await backend.list_leases():
            if not lease.name.startswith(prefix) or lease.holder == supervisor.holder:
                continue
            try:
                holder = json.loads(lease.holder)
                host, pid = str(holder["host"]), int(holder["pid"])
            except (ValueError, TypeError, KeyError):
                continue  # not ours to read: leases are advisory here
            found.append(
                ServiceInstance(
                    service=lease.name.removeprefix(prefix),
                    host=host,
                    pid=pid,
                    singleton=True,
                    local=False,
                    state=ServiceState.RUNNING,
                    since=lease.acquired_at,
                )
            )
    if isinstance(backend, WorkerPresence):
        for info in await backend.list_workers():
            for name in info.services:
                if name in singletons:
                    continue
                found.append(
                    ServiceInstance(
                        service=name,
                        host=info.host,
                        pid=info.pid,
                        singleton=False,
                        local=False,
                        state=ServiceState.RUNNING,
                    )
                )
    unique: dict[tuple[str, str, int], ServiceInstance] = {}
    for instance in found:
        unique.setdefault((instance.service, instance.host, instance.pid), instance)
    return sorted(unique.values(), key=lambda i: (not i.local, i.service, i.host, i.pid))


class _Once:
    """Tells the runtime once that a service started, however many paths report it."""

    def __init__(self, status: TaskStatus[None]) -> None:
        self.status = status
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.status.started(value)


class ServiceSupervisor:
    """Owns an :class:`~afterwork.Afterwork` instance's services and their tasks."""

    def __init__(self, host: Host, make_context: ContextFactory) -> None:
        self.host = host
        self.make_context = make_context
        self.specs: dict[str, ServiceSpec] = {}
        self._services: dict[str, _Service] = {}
        self.abandoned: set[asyncio.Task[Any]] = set()
        """Runs that ignored cancellation at shutdown: kept referenced until they end."""
        self.host_name: str = socket.gethostname()
        self.holder: str = json.dumps(
            {"host": self.host_name, "pid": os.getpid(), "id": os.urandom(6).hex()},
            separators=(",", ":"),
        )
        """How this process names itself as a singleton's lease holder (JSON)."""

    def leases(self, spec: ServiceSpec) -> Leases:
        """The store's leases, for the singleton ``spec``.

        Raises:
            ConfigurationError: the store keeps no leases (see ``check_singletons``).
        """
        backend = self.host.backend
        if not isinstance(backend, Leases):
            raise ConfigurationError(
                f"service {spec.name} is declared singleton=True, but the store "
                f"{type(backend).__name__} keeps no leases (afterwork.backends.base.Leases); "
                "use memory://, sqlite:// or redis://, or drop singleton=True"
            )
        return backend

    def check_singletons(self) -> None:
        """Refuse singletons on a store that keeps no leases (``ConfigurationError``)."""
        for spec in self.specs.values():
            if spec.singleton:
                self.leases(spec)

    def running_here(self) -> tuple[str, ...]:
        """The services this process runs now (a standby singleton is not among them)."""
        return tuple(name for name, s in self._services.items() if s.state in _LIVE)

    def local_instances(self) -> list[ServiceInstance]:
        """This process's running services, as instances."""
        return [
            ServiceInstance(
                service=name,
                host=self.host_name,
                pid=os.getpid(),
                singleton=service.spec.singleton,
                local=True,
                state=service.state,
                since=service.lease_acquired_at or service.started_at,
            )
            for name, service in self._services.items()
            if service.state in _LIVE
        ]

    def add(self, spec: ServiceSpec) -> None:
        """Register a service; names are unique per :class:`~afterwork.Afterwork` instance.

        Raises:
            ConfigurationError: a singleton on a store that keeps no leases.
        """
        if spec.name in self.specs:
            raise ValueError(f"a service named {spec.name!r} is already registered")
        if spec.singleton:
            self.leases(spec)
        self.specs[spec.name] = spec

    def statuses(self) -> list[ServiceStatus]:
        """The status of every declared service (``pending`` before the runtime starts)."""
        return [
            service.status()
            if (service := self._services.get(name)) is not None
            else _Service(spec, self).status()
            for name, spec in self.specs.items()
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start every service, yield once all have started, stop them all on exit.

        Raises:
            ServiceStartError: a service failed to start; the others were stopped.
        """
        self.check_singletons()
        services = [_Service(spec, self) for spec in self.specs.values()]
        self._services = {service.spec.name: service for service in services}
        failure: ServiceStartError | None = None
        async with anyio.create_task_group() as group:
            try:
                for service in services:
                    try:
                        await group.start(
                            service.supervise, name=f"afterwork supervisor {service.spec.name}"
                        )
                    except ServiceStartError as exc:
                        failure = exc
                        break
                if failure is None:
                    yield
            finally:
                for service in services:
                    service.request_stop()
        if failure is not None:
            logger.error(
                "%s; stopping the other services",
                failure.message,
                exc_info=failure.__cause__,
                extra={"action": "service_start_failed", "service": {"name": failure.service}},
            )
            raise failure
