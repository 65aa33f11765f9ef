"""The Redis store's enqueue path: concurrent ``enqueue()`` calls share one script call
(group commit), sent on a connection of its own; the jobs returned are built here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from .. import _lifecycle as life
from ..exceptions import BackendUnavailable
from ..job import Job, JobOwner
from ._redis_scripts import SCRIPTS, Script, job_args, new_job
from ._redis_topology import Topology
from .base import Clock, NewJob

__all__ = ("EnqueueMixin",)

logger: logging.Logger = logging.getLogger("afterwork.backends.redis")

_ENQUEUE_BATCH = 1000  # jobs per grouped enqueue call (one caller's jobs are never split)


def _pack(conn: Any, args: tuple[str, ...]) -> Any:
    """``args`` as one Redis command: hiredis's encoder in C when it is installed (the
    ``redis`` extra installs it), about a tenth of redis-py's per-argument Python."""
    if _hiredis_pack is not None:
        return _hiredis_pack(args)
    return conn.pack_command(*args)


_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis-py without hiredis
    _hiredis_pack = None


class EnqueueMixin:
    """``enqueue`` of :class:`~afterwork.backends.redis.RedisBackend`."""

    if TYPE_CHECKING:
        job_owner: JobOwner | None
        events_key: str
        _topology: Topology
        _keys: str
        _clock: Clock | None
        _maxlen: str
        _socket_timeout: float
        _redis: Any
        _enq_loop: asyncio.AbstractEventLoop | None
        _enq_busy: bool
        _enq_waiting: list[tuple[Sequence[NewJob], asyncio.Future[list[Job]]]]
        _enq_flusher: asyncio.Task[None] | None
        _enq_conn: Any

        def _require(self) -> Any: ...

        async def _eval(
            self, script: Script, *args: str, retry_for: float | None = None, replay: int = -1
        ) -> Any: ...

        async def _retrying(
            self,
            call: Callable[[], Any],
            retry_for: float | None,
            on_retry: Callable[[], None] | None = None,
        ) -> Any: ...

        def _parse(self, record: list[Any], job_id: str | None = None) -> Job: ...

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Store ``jobs`` in one script call; concurrent calls share one (group commit).

        The first caller sends its jobs at once. Callers that arrive while a call is in
        flight wait, and the next call carries all their jobs: one round trip and one
        append-only-file write for the group instead of one each. Each caller returns only
        after the call holding its jobs was applied; if that call fails for a reason other
        than an unreachable Redis, each caller's jobs are sent again on their own, so one
        bad job fails only its caller.
        """
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        if self._enq_loop is not loop:  # first use, or a new event loop: nothing in flight
            self._enq_loop, self._enq_busy, self._enq_waiting = loop, False, []
            self._enq_conn = None  # a connection's streams belong to the loop that opened it
        if self._enq_busy:
            future: asyncio.Future[list[Job]] = loop.create_future()
            self._enq_waiting.append((jobs, future))
            return await future
        self._enq_busy = True
        try:
            return await self._enqueue_now(jobs)
        finally:
            if self._enq_waiting:
                self._enq_flusher = loop.create_task(self._flush_enqueues())
            else:
                self._enq_busy = False

    async def _flush_enqueues(self) -> None:
        """Send the waiting enqueues, a group per script call, until none waits."""
        try:
            while self._enq_waiting:
                group: list[tuple[Sequence[NewJob], asyncio.Future[list[Job]]]] = []
                size = 0
                while self._enq_waiting and (not group or size < _ENQUEUE_BATCH):
                    jobs, future = self._enq_waiting.pop(0)
                    if not future.done():  # a caller cancelled while waiting sent nothing
                        group.append((jobs, future))
                        size += len(jobs)
                if group:
                    await self._enqueue_group(group)
        finally:
            self._enq_busy = False
            self._enq_flusher = None
            for _, future in self._enq_waiting:  # only if this task itself was cancelled
                if not future.done():
                    future.set_exception(BackendUnavailable("the Redis store was closed"))
            self._enq_waiting = []

    async def _enqueue_group(
        self, group: list[tuple[Sequence[NewJob], asyncio.Future[list[Job]]]]
    ) -> None:
        if len(group) > 1:
            try:
                replies = await self._enqueue_reply([new for jobs, _ in group for new in jobs])
            except BackendUnavailable as exc:
                for _, future in group:
                    if not future.done():
                        copy = BackendUnavailable(str(exc), may_have_applied=exc.may_have_applied)
                        copy.__cause__ = exc.__cause__
                        future.set_exception(copy)
                return
            except Exception:
                logger.debug("a grouped enqueue failed; sending each caller's jobs alone")
            else:
                now, existing = replies
                start = 0
                for jobs, future in group:
                    end = start + len(jobs)
                    self._resolve(future, jobs, now, existing[start:end])
                    start = end
                return
        for jobs, future in group:
            try:
                result = await self._enqueue_now(jobs)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    def _resolve(
        self,
        future: asyncio.Future[list[Job]],
        jobs: Sequence[NewJob],
        now: float,
        existing: Sequence[Any],
    ) -> None:
        """Answer one caller of a group (a record it cannot read fails only that caller)."""
        if future.done():
            return
        try:
            future.set_result(self._jobs(jobs, now, existing))
        except Exception as exc:
            future.set_exception(exc)

    async def _enqueue_now(self, jobs: Sequence[NewJob]) -> list[Job]:
        now, existing = await self._enqueue_reply(jobs)
        return self._jobs(jobs, now, existing)

    async def _enqueue_reply(self, jobs: Sequence[NewJob]) -> tuple[float, list[Any]]:
        args = [str(len(jobs))]
        for new in jobs:
            args.extend(job_args(new))
            args.append("1" if new.debounce else "")
        reply = await self._eval_enqueue(args)
        return float(reply[0]), reply[1:]

    async def _eval_enqueue(self, args: list[str]) -> Any:
        """The enqueue script, on a connection of its own (``_eval`` on a cluster or
        through Sentinel).

        Enqueue calls never overlap (one group at a time, see ``enqueue``), so one
        connection serves them all, without the pool's lock and bookkeeping; and one
        ``asyncio.timeout`` bounds the call instead of redis-py's per-read and per-write
        ones (a task per write): together a third of the client's CPU per enqueue. A
        timeout or a cancel mid-call drops the connection (redis-py disconnects on any
        error), and the next call opens a new one.
        """
        if self._topology.kind != "single":
            return await self._eval(SCRIPTS["enqueue"], *args)
        script = SCRIPTS["enqueue"]
        argv = [self._keys, "" if self._clock is None else repr(self._clock()), self._maxlen]
        argv.extend(args)

        async def call() -> Any:
            conn = self._enq_conn
            if conn is None:
                pool = self._require().connection_pool
                options = {**pool.connection_kwargs, "socket_timeout": None}
                conn = self._enq_conn = pool.connection_class(**options)
            elif self._redis is None:
                self._require()  # closed
            async with asyncio.timeout(self._socket_timeout):
                try:
                    await conn.send_packed_command(
                        _pack(conn, ("EVALSHA", script.sha, "1", self.events_key, *argv)),
                        check_health=False,
                    )
                    return await conn.read_response()
                except NoScriptError:  # not run: a restarted server
                    await conn.send_packed_command(
                        _pack(conn, ("EVAL", script.source, "1", self.events_key, *argv)),
                        check_health=False,
                    )
                    return await conn.read_response()

        return await self._retrying(call, None)

    def _jobs(self, jobs: Sequence[NewJob], now: float, existing: Sequence[Any]) -> list[Job]:
        """The jobs an enqueue returns: built here if created (attached to ``job_owner``,
        as the app would attach them: one record each, not one and a copy), else read."""
        owner = self.job_owner
        return [
            (
                self._parse(found)
                if found != 0
                else new_job(new, now)
                if owner is None or new.delay > 0
                else life.created_job(new, now, created_now=True, owner=owner)
            )
            for new, found in zip(jobs, existing, strict=True)
        ]
