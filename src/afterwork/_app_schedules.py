"""The facade's schedules and services: ``@aw.cron``, ``@aw.every``, ``@aw.service``.

A mixin of :class:`~afterwork.app.Afterwork`, kept apart so the facade module stays small;
the logic lives in ``_engine/scheduler.py`` and ``_engine/services.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast, overload

from ._engine.scheduler import CronTrigger, IntervalTrigger, Misfire, Schedule, ScheduleInfo
from ._engine.services import (
    Readiness,
    Restart,
    ServiceInstance,
    ServiceSpec,
    ServiceStatus,
    service_instances,
)
from .job import Job
from .retry import Backoff
from .task import Task

if TYPE_CHECKING:
    from ._engine.scheduler import Scheduler
    from ._engine.services import ServiceSupervisor
    from .task import TaskOptions, TaskOwner

__all__ = ("SchedulesAndServices",)

P = ParamSpec("P")
R = TypeVar("R")


class SchedulesAndServices:
    """``cron``/``every``/``trigger``/``schedules`` and ``service``/``services``."""

    if TYPE_CHECKING:
        scheduler: Scheduler
        supervisor: ServiceSupervisor

        async def _ensure_open(self) -> None: ...

        def register(
            self,
            func: Callable[P, R],
            *,
            name: str | None = None,
            options: TaskOptions | None = None,
        ) -> Task[P, R]:
            """Defined by :class:`~afterwork.app.Afterwork`."""

    def cron(
        self,
        expr: str,
        /,
        *,
        tz: str = "UTC",
        name: str | None = None,
        misfire: Misfire = "run_once",
        misfire_grace: float = 60.0,
        catch_up: float = 60.0,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Run a task on a cron schedule: ``@aw.cron("0 9 * * *", tz="Europe/Paris")``.

        Decorates a function (registered as a task with default options) or a task
        (``@aw.cron(...)`` above ``@aw.task(...)``) and returns the task. Each tick is
        enqueued exactly once however many processes run the scheduler. See
        ``docs/schedules.md`` for the DST rule and for ``misfire``.

        Args:
            expr: five fields (``minute hour day month weekday``), or six with seconds first.
            tz: the IANA time zone the expression is read in.
            name: the schedule's name; default the task's name.
            misfire: ``"run_once"`` or ``"skip"``: what happens to ticks missed while no
                scheduler ran (never more than one job).
            misfire_grace: seconds after its instant a tick still counts as on time.
            catch_up: ticks missed while the store was unreachable (or while a running
                scheduler's pass came late) are each enqueued once if at most this many
                seconds old; ``misfire`` beyond.
        """
        trigger = CronTrigger(expr, tz)
        return lambda func: self._schedule(func, trigger, name, misfire, misfire_grace, catch_up)

    def every(
        self,
        interval: timedelta | float,
        /,
        *,
        name: str | None = None,
        misfire: Misfire = "run_once",
        misfire_grace: float = 60.0,
        catch_up: float = 60.0,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Run a task every ``interval``: ``@aw.every(timedelta(seconds=30))``.

        Ticks fall on multiples of the interval since the Unix epoch (so every process
        computes the same ones); otherwise as :meth:`cron`.
        """
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
        trigger = IntervalTrigger(float(seconds))
        return lambda func: self._schedule(func, trigger, name, misfire, misfire_grace, catch_up)

    def _schedule(
        self,
        func: Callable[P, R],
        trigger: CronTrigger | IntervalTrigger,
        name: str | None,
        misfire: Misfire,
        misfire_grace: float,
        catch_up: float = 60.0,
    ) -> Task[P, R]:
        task = func if isinstance(func, Task) else self.register(func)
        if task.owner is not cast("TaskOwner", self):  # Afterwork is one
            raise ValueError(f"{task.name} is registered with another Afterwork instance")
        schedule = Schedule(
            name=name or task.name,
            task=task,
            trigger=trigger,
            misfire=misfire,
            misfire_grace=misfire_grace,
            catch_up=catch_up,
        )
        self.scheduler.add(schedule)
        return task

    @property
    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule with its next run (by the store's clock); no store query."""
        return self.scheduler.info()

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule with its next run and the last tick the store enqueued."""
        await self._ensure_open()
        return await self.scheduler.list_schedules()

    async def trigger(self, schedule: str) -> Job:
        """Run a schedule's task now ("run now"): an ordinary enqueue, not a tick.

        Raises:
            ScheduleNotFound: there is no schedule with that name.
        """
        return await self.scheduler.get(schedule).task.enqueue()

    @overload
    def service(self, func: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...

    @overload
    def service(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        restart: Restart = "on-failure",
        backoff: Backoff | None = None,
        ready: Readiness = "auto",
        startup_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        singleton: bool = False,
        lease_ttl: float | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...

    def service(
        self,
        func: Callable[P, Awaitable[R]] | None = None,
        /,
        *,
        name: str | None = None,
        restart: Restart = "on-failure",
        backoff: Backoff | None = None,
        ready: Readiness = "auto",
        startup_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        singleton: bool = False,
        lease_ttl: float | None = None,
    ) -> (
        Callable[P, Awaitable[R]] | Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]
    ):
        """Declare a supervised long-running coroutine (bare ``@aw.service`` or with options).

        ``aw.runtime()`` (so ``aw.lifespan`` and ``afterwork worker``) starts it, restarts it
        as ``restart`` says and stops it; see ``docs/services.md`` for the contract.
        Returns the function unchanged.

        Args:
            name: the service's name; default ``module:qualname``.
            restart: ``"on-failure"`` restarts it after a crash, ``"always"`` also after it
                returns, ``"never"`` leaves it stopped.
            backoff: delay before a restart; default exponential from 1 s, capped at 60 s.
            ready: ``"auto"``: started at its first await (or ``ctx.ready()``);
                ``"explicit"``: started only once it calls ``ctx.ready()``.
            startup_timeout: seconds an explicit service has to call ``ctx.ready()``.
            shutdown_timeout: seconds it has to stop once cancelled before it is abandoned.
            singleton: run one instance across every process sharing the store, in the
                process holding its store lease (the others stand by and take over when it
                stops or dies); default: one instance in every process running the runtime.
                The store must keep leases (memory, SQLite, Redis), else
                :class:`~afterwork.exceptions.ConfigurationError`.
            lease_ttl: a singleton's lease in seconds (default: the ``lease_ttl``
                setting); a dead holder is replaced within it (plus a fifth of it).
        """

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            self.supervisor.add(
                ServiceSpec.of(
                    fn,
                    name=name,
                    restart=restart,
                    backoff=backoff,
                    ready=ready,
                    startup_timeout=startup_timeout,
                    shutdown_timeout=shutdown_timeout,
                    singleton=singleton,
                    lease_ttl=lease_ttl,
                )
            )
            return fn

        return decorate if func is None else decorate(func)

    @property
    def services(self) -> list[ServiceStatus]:
        """The status of every declared service."""
        return self.supervisor.statuses()

    async def service_instances(self) -> list[ServiceInstance]:
        """Every process running a service now, with host and pid (this one's first).

        Other processes are known from their workers' presence records and, for
        singletons, from the store lease's holder; see ``docs/services.md``.
        """
        await self._ensure_open()
        return await service_instances(self.supervisor)
