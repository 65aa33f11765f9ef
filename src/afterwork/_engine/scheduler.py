"""Periodic jobs: cron and interval schedules whose ticks are enqueued exactly once.

Every process that runs ``aw.runtime()`` (``aw.lifespan``, ``afterwork worker``) runs a
:class:`Scheduler`. There is no leader: each scheduler computes the same ticks from the
store's clock and hands each one to ``backend.enqueue_tick(schedule, tick, job)``, which
writes the tick mark and the job in one atomic step. However many processes race for a
tick, the store keeps exactly one job for it.

Ticks are instants (seconds since the epoch), computed the same way in every process:

* ``every(interval)``: multiples of ``interval`` since the epoch (``every(hours=1)``
  fires on the hour, UTC).
* ``cron(expr, tz=...)``: the instants the expression matches in ``tz``, with the DST rule
  of Debian cron / cronie (see :class:`CronTrigger`).

Misfires (the scheduler was not running when a tick was due): at most one missed tick
per schedule is run, never a burst. See :class:`Schedule`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskStatus

from .._middleware import JobCall, run_through
from ..exceptions import ConfigurationError, EnqueueError, ScheduleNotFound
from ..job import SCHEDULE_HEADER, check_headers

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ..backends.base import NewJob
    from ..job import Job
    from ..task import Task
    from .host import Host

__all__ = (
    "CronTrigger",
    "IntervalTrigger",
    "Misfire",
    "Schedule",
    "ScheduleInfo",
    "Scheduler",
    "Trigger",
)

# The logger keeps the name it had when this module was ``afterwork.scheduler``.
logger: logging.Logger = logging.getLogger("afterwork.scheduler")

#: What to do with ticks that passed while no scheduler ran (see :class:`Schedule`).
Misfire = Literal["skip", "run_once"]

#: Longest a scheduler sleeps before it looks at the clock again.
MAX_SLEEP = 60.0
#: Extra sleep so a timer that fires a hair early does not wake the loop twice.
_SLACK = 0.005
#: Most ticks of one schedule enqueued when the store answers again after an outage.
_MAX_CATCH_UP = 1000


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class IntervalTrigger:
    """Ticks every ``seconds``, on multiples of ``seconds`` since the Unix epoch.

    Aligning on the epoch (not on when a process started) is what lets every process
    compute the same ticks: ``every(timedelta(minutes=5))`` fires at :00, :05, :10 UTC.
    """

    seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.seconds) or self.seconds < 1:
            raise ConfigurationError(f"an interval must be at least 1 second, not {self.seconds}")

    @property
    def kind(self) -> str:
        return "every"

    @property
    def spec(self) -> str:
        return str(timedelta(seconds=self.seconds))

    @property
    def tz(self) -> str:
        return "UTC"

    def latest(self, now: float) -> float:
        """The latest tick at or before ``now``."""
        return float(math.floor(now / self.seconds) * self.seconds)

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment``."""
        return float((math.floor(moment / self.seconds) + 1) * self.seconds)


@dataclass(frozen=True, slots=True)
class CronTrigger:
    """Ticks when a cron expression matches, in a time zone (parsed by ``cronsim``).

    Five fields (``minute hour day month weekday``), or six with seconds first. Ticks are
    whole seconds.

    DST rule (Debian cron's, which cronsim follows): an expression with a fixed minute
    *and* a fixed hour (``30 2 * * *``) names a wall-clock time and runs once per
    matching day:

    * on a spring-forward day, a time that does not exist (02:30 in New York on the second
      Sunday of March) runs once, at the first minute after the gap (03:00);
    * on a fall-back day, a time that happens twice (01:30 in New York on the first Sunday
      of November) runs once, at its first occurrence (01:30 EDT).

    Any other expression (``*/15 * * * *``, ``0 * * * *``, or six fields with seconds
    other than ``0``) follows elapsed time: it runs at each real instant whose wall-clock
    time matches, so an hourly job runs in both passes of a repeated hour and not at all
    in the hour that is skipped. Six fields with ``0`` seconds are read as five.
    """

    expr: str
    tz: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _fields: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Loaded with the first cron schedule, not by every worker (zoneinfo, cronsim).
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from cronsim import CronSim, CronSimError

        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"unknown time zone {self.tz!r}") from exc
        parts = self.expr.split()
        if len(parts) == 6 and parts[0] == "0":
            parts = parts[1:]  # ``0 30 2 * * *`` is ``30 2 * * *``: same DST rule
        fields = " ".join(parts)
        try:
            CronSim(fields, datetime.now(zone))
        except CronSimError as exc:
            raise ConfigurationError(f"invalid cron expression {self.expr!r}: {exc}") from exc
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_fields", fields)

    @property
    def kind(self) -> str:
        return "cron"

    @property
    def spec(self) -> str:
        return self.expr

    def latest(self, now: float) -> float | None:
        """The latest tick at or before ``now`` (``None``: none in the last 50 years)."""
        from cronsim import CronSim

        start = datetime.fromtimestamp(math.floor(now) + 1, self._zone)
        try:
            return next(CronSim(self._fields, start, reverse=True)).timestamp()
        except StopIteration:
            return None

    def next_after(self, moment: float) -> float | None:
        """The first tick strictly after ``moment`` (``None``: none in 50 years)."""
        from cronsim import CronSim

        start = datetime.fromtimestamp(math.floor(moment), self._zone)
        try:
            return next(CronSim(self._fields, start)).timestamp()
        except StopIteration:
            return None


#: A schedule's rule for its ticks.
Trigger = CronTrigger | IntervalTrigger


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A task run periodically: declared with ``@aw.cron`` or ``@aw.every``.

    Misfires: a tick is *on time* if a scheduler sees it within ``misfire_grace`` seconds
    of its instant. Ticks missed while no scheduler ran are never run one by one:

    * ``misfire="run_once"`` (the default): when the latest due tick is late, it is
      enqueued once, late; the older missed ticks are dropped.
    * ``misfire="skip"``: late ticks are dropped; the schedule resumes at its next tick.

    Either way at most one job is enqueued per schedule when the schedulers come back. A
    schedule that never ran (no tick in the store) does not catch up on ticks older than
    ``misfire_grace``.

    A short store outage is different: the schedulers ran, but could not write. Ticks
    missed during it are each enqueued (exactly once) when the store answers again, if
    they are at most ``catch_up`` seconds old (default 60); older ones follow ``misfire``.
    So are the ticks a running scheduler missed because its pass came late (a blocked
    event loop, a starved machine).
    """

    name: str
    task: Task[Any, Any]
    trigger: Trigger
    misfire: Misfire = "run_once"
    misfire_grace: float = 60.0
    catch_up: float = 60.0
    """Ticks missed while the store was unreachable (the schedulers ran, their passes
    failed) are each enqueued once it answers again, if they are at most this many seconds
    old; the misfire policy applies to older ones."""

    def __post_init__(self) -> None:
        if not self.catch_up >= 0:
            raise ConfigurationError("catch_up must not be negative")
        if self.misfire not in ("skip", "run_once"):
            raise ConfigurationError(f"misfire must be 'skip' or 'run_once', not {self.misfire!r}")
        if not self.misfire_grace >= 0:
            raise ConfigurationError("misfire_grace must not be negative")
        if not self.name:
            raise ConfigurationError("a schedule needs a name")
        try:
            self.task.codec.encode((), {})
        except EnqueueError as exc:
            raise TypeError(
                f"{self.task.name} cannot be scheduled: a scheduled task is called without "
                f"arguments, so it may only take injected ones ({exc})"
            ) from None

    def info(self, now: float, *, last_run: float | None = None) -> ScheduleInfo:
        """How the schedule looks at ``now`` (seconds since the epoch, store clock)."""
        return ScheduleInfo(
            name=self.name,
            task=self.task.name,
            kind=self.trigger.kind,
            spec=self.trigger.spec,
            tz=self.trigger.tz,
            misfire=self.misfire,
            next_run=self.trigger.next_after(now),
            last_run=last_run,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleInfo:
    """A schedule as listed by ``aw.schedules``, the CLI and the REST API."""

    name: str
    task: str
    kind: str
    """``"cron"`` or ``"every"``."""
    spec: str
    """The cron expression, or the interval as ``H:MM:SS``."""
    tz: str
    misfire: Misfire
    next_run: float | None
    """The next tick, seconds since the epoch (``None``: the expression never matches)."""
    last_run: float | None = None
    """The latest tick enqueued, read from the store (``await aw.list_schedules()`` only)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with times also as ISO 8601 strings (UTC)."""
        return {
            "name": self.name,
            "task": self.task,
            "kind": self.kind,
            "spec": self.spec,
            "tz": self.tz,
            "misfire": self.misfire,
            "next_run": self.next_run,
            "next_run_at": _iso(self.next_run),
            "last_run": self.last_run,
            "last_run_at": _iso(self.last_run),
        }


class Scheduler:
    """Enqueues the ticks of an :class:`Afterwork` instance's schedules as they fall due.

    One runs in every process that runs ``aw.runtime()``. It holds no lock and elects no
    leader: ``enqueue_tick`` in the store makes each tick exactly-once. Between passes it
    sleeps until the next tick (at most :data:`MAX_SLEEP` seconds), and :meth:`wake` cuts
    the sleep short.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.schedules: dict[str, Schedule] = {}
        self.passes: int = 0
        """Completed scheduling passes (for tests and statistics)."""
        self._seen: dict[str, float] = {}  # per schedule: the latest tick already decided
        self._last_ok: float | None = None  # store time of the last pass that worked
        self._outage_since: float | None = None
        """While passes fail: the store time of the last one that worked (or of the first
        failure); ticks after it were missed because the store did not answer."""
        self._wakeup = anyio.Event()
        self._passed = anyio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"<Scheduler schedules={len(self.schedules)} passes={self.passes}>"

    def add(self, schedule: Schedule) -> None:
        """Register a schedule; names are unique per :class:`Afterwork` instance."""
        if schedule.name in self.schedules:
            raise ValueError(
                f"a schedule named {schedule.name!r} already exists; pass name= to tell them apart"
            )
        self.schedules[schedule.name] = schedule

    def get(self, name: str) -> Schedule:
        """The schedule called ``name``."""
        try:
            return self.schedules[name]
        except KeyError:
            raise ScheduleNotFound(f"no schedule named {name!r}", schedule=name) from None

    def info(self) -> list[ScheduleInfo]:
        """Every schedule with its next run, by the store's clock."""
        now = self.host.backend.now()
        return [schedule.info(now) for schedule in self.schedules.values()]

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule with its next run and the last tick the store recorded."""
        backend = self.host.backend
        now = backend.now()
        return [
            schedule.info(now, last_run=await backend.last_tick(schedule.name))
            for schedule in self.schedules.values()
        ]

    # -- one pass ------------------------------------------------------------------------

    async def run_pending(self) -> list[Job]:
        """Enqueue every tick that is due now; return the jobs this call created.

        A tick another process enqueued first is not returned (the store refused it).
        """
        created: list[Job] = []
        now = self.host.backend.now()
        try:
            for schedule in list(self.schedules.values()):
                created.extend(await self._run_schedule(schedule, now))
        except Exception:
            if self._outage_since is None:
                self._outage_since = now if self._last_ok is None else self._last_ok
            raise
        self._outage_since = None
        self._last_ok = now
        return created

    async def _run_schedule(self, schedule: Schedule, now: float) -> list[Job]:
        trigger = schedule.trigger
        due = trigger.latest(now)
        if due is None or self._seen.get(schedule.name, -math.inf) >= due:
            return []
        backend = self.host.backend
        last = await backend.last_tick(schedule.name)
        ticks = caught_up = self._caught_up(schedule, now, due, last)
        if not ticks:
            tick = self._decide(schedule, now, due, last)
            ticks = [] if tick is None else [tick]
        jobs = []
        for tick in ticks:  # oldest first; the store keeps one job per tick
            new = self.host.build_job(
                schedule.task, (), {}, {"key": f"{schedule.name}@{_iso(tick)}"}
            )
            new.headers[SCHEDULE_HEADER] = schedule.name  # its attempts know it is a tick
            job = await self._enqueue_tick(schedule, tick, new)
            if job is None:  # another process enqueued this tick first
                continue
            jobs.append(job)
            logger.info(
                "schedule %s: enqueued tick %s as job %s",
                schedule.name,
                _iso(tick),
                job.id,
                extra={
                    "action": "tick_enqueued",
                    "schedule": {"name": schedule.name, "tick": tick},
                    "job": {"id": job.id, "task": job.task},
                },
            )
        if caught_up and jobs:
            self._log_caught_up(schedule, caught_up, jobs, last)
        self._seen[schedule.name] = due
        return jobs

    async def _enqueue_tick(self, schedule: Schedule, tick: float, new: NewJob) -> Job | None:
        """Store one tick's job inside the host's middleware; ``None`` if it already was."""
        backend = self.host.backend

        async def store() -> Job | None:
            if new.headers:  # an enqueue middleware may have added to them
                check_headers(new.headers, task=new.task)
            created = await backend.enqueue_tick(schedule.name, tick, new)
            return None if created is None else created.bind(self.host)

        chain = self.host.middleware_chain
        if not chain:
            return await store()
        call = JobCall("enqueue", new.task, new.queue, new.id, new_job=new)
        return await run_through(chain, call, store)

    def _log_caught_up(
        self, schedule: Schedule, ticks: list[float], jobs: list[Job], last: float | None
    ) -> None:
        following = None if last is None else schedule.trigger.next_after(last)
        dropped = following is not None and following < ticks[0]
        cause = (
            f"while the store was unreachable (no scheduler pass worked after "
            f"{_iso(self._outage_since)})"
            if self._outage_since is not None
            else f"because the scheduler's pass came late (its previous pass was at "
            f"{_iso(self._last_ok)}: the process was busy or starved)"
        )
        logger.warning(
            "schedule %s: %d tick(s) from %s were missed %s; enqueued them now%s",
            schedule.name,
            len(jobs),
            _iso(ticks[0]),
            cause,
            f"; older ticks (after {_iso(last)}) are past catch_up={schedule.catch_up:g}s "
            "and dropped"
            if dropped
            else "",
            extra={"action": "ticks_caught_up", "schedule": {"name": schedule.name}},
        )

    def _caught_up(
        self, schedule: Schedule, now: float, due: float, last: float | None
    ) -> list[float]:
        """The ticks this running scheduler missed, within ``catch_up``, oldest first.

        Two causes, one rule: ticks that fell due while its passes failed (a store outage),
        or while it ran but its pass came late (its event loop was blocked, the machine was
        starved). Either way a scheduler was alive for them, so each is enqueued once; only
        ticks that fell due while no scheduler ran follow ``misfire``. ``[]`` when the only
        tick to enqueue is ``due`` itself (the usual, on-time case).
        """
        since = self._outage_since if self._outage_since is not None else self._last_ok
        if since is None or last is None or last >= due:
            return []
        oldest = max(since, now - schedule.catch_up)
        ticks: list[float] = []
        # Start at the window, not at ``last`` (which may be long ago).
        tick = schedule.trigger.next_after(max(last, oldest - 1e-6))
        while tick is not None and tick <= due and len(ticks) < _MAX_CATCH_UP:
            ticks.append(tick)
            tick = schedule.trigger.next_after(tick)
        if ticks == [due] and schedule.trigger.next_after(last) == due:
            return []  # nothing was missed: the on-time path decides it
        return ticks

    def _decide(
        self, schedule: Schedule, now: float, due: float, last: float | None
    ) -> float | None:
        """Which tick to enqueue, if any, given the latest due one and the store's last."""
        if last is not None and last >= due:
            return None
        late = now - due > schedule.misfire_grace
        if last is None:
            # Never ran: nothing was missed, only an on-time tick counts.
            return None if late else due
        following = schedule.trigger.next_after(last)
        missed = following is not None and following < due
        if not late and not missed:
            return due
        run = not late or schedule.misfire == "run_once"
        cause = (
            f"while the store was unreachable (no scheduler pass worked after "
            f"{_iso(self._outage_since)}; beyond catch_up={schedule.catch_up:g}s)"
            if self._outage_since is not None
            else "while no scheduler ran"
        )
        logger.warning(
            "schedule %s: ticks after %s were missed %s; %s",
            schedule.name,
            _iso(last),
            cause,
            f"enqueuing only the tick of {_iso(due)}" if run else "skipping them",
            extra={"action": "ticks_missed", "schedule": {"name": schedule.name}},
        )
        return due if run else None

    # -- the loop ------------------------------------------------------------------------

    def wake(self) -> None:
        """Cut the current sleep short: the scheduler runs a pass at once."""
        self._wakeup.set()

    def stop(self) -> None:
        """Stop the loop after the current pass."""
        self._stopping = True
        self._wakeup.set()

    async def wait_passes(self, count: int) -> None:
        """Wait until at least ``count`` passes have completed (see :attr:`passes`).

        With :meth:`wake` this lets tests drive a running scheduler with a fake clock:
        ``target = s.passes + 1; clock.advance(1); s.wake(); await s.wait_passes(target)``.
        """
        while self.passes < count:
            await self._passed.wait()

    def _next_wake(self) -> float:
        """Seconds until the first tick no pass has decided yet (0: one is already due).

        Counted from the ticks already decided, not from the clock after the pass: a pass
        that ends past the next tick's instant (a slow store, a busy machine) must not sleep
        over that tick.
        """
        now = self.host.backend.now()
        upcoming = [
            tick
            for schedule in self.schedules.values()
            if (tick := schedule.trigger.next_after(self._seen.get(schedule.name, now))) is not None
        ]
        if not upcoming:
            return MAX_SLEEP
        return min(max(min(upcoming) - now, 0.0) + _SLACK, MAX_SLEEP)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run passes until :meth:`stop`; store errors are logged and retried with backoff."""
        self._stopping = False
        logger.info(
            "scheduler started with %d schedule(s): %s",
            len(self.schedules),
            ", ".join(self.schedules),
            extra={"action": "scheduler_started"},
        )
        task_status.started()
        failures = 0
        try:
            while not self._stopping:
                self._wakeup = anyio.Event()
                try:
                    await self.run_pending()
                    failures = 0
                    delay = self._next_wake()
                except Exception:
                    failures += 1
                    delay = min(30.0, 0.5 * 2 ** min(failures, 10))
                    logger.warning(
                        "scheduler pass failed; trying again in %.1fs",
                        delay,
                        exc_info=True,
                        extra={"action": "scheduler_failed"},
                    )
                self.passes += 1
                passed, self._passed = self._passed, anyio.Event()
                passed.set()
                if self._stopping:
                    break
                with self.host.clock.move_on_after(delay):
                    await self._wakeup.wait()
        finally:
            logger.info("scheduler stopped", extra={"action": "scheduler_stopped"})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Scheduler]:
        """Run the loop for the ``async with`` block (what ``aw.runtime()`` does)."""
        async with anyio.create_task_group() as group:
            await group.start(self.run, name="afterwork scheduler")
            try:
                yield self
            finally:
                self.stop()
                group.cancel_scope.cancel()
