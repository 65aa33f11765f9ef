"""The Redis backend: any number of web and worker processes on any number of machines.

Every state change that touches more than one key runs as one Lua script (see
``_redis_scripts``), so a crash or a lost connection never leaves a job half-written and
workers never read-then-write. Time is the Redis server's ``TIME`` unless a clock is
injected (tests), in which case each script gets ``now`` as an argument.

Idle workers wait on a pub/sub wake-up channel (plus a check of the delayed set, so a
scheduled job wakes them at its time: made by the claim just before the wait, when it
found fewer jobs than it asked for); cancel requests reach the owning worker on a second
channel. Events go to a capped stream, so every process sees every change and a
reader can resume from ``JobEvent.id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _lifecycle as life
from .._notify import Notifier
from ..exceptions import BackendError, BackendUnavailable, ConfigurationError
from ..job import Job, JobOwner, JobStatus
from ._redis_channels import RedisChannel
from ._redis_enqueue import EnqueueMixin
from ._redis_events import StreamEvents, execute
from ._redis_history import HistoryMixin
from ._redis_leases import LeasesMixin
from ._redis_local import LocalWritesMixin
from ._redis_presence import PresenceMixin
from ._redis_scripts import (
    FIELDS,
    SCRIPTS,
    MalformedRecord,
    Script,
    Timelines,
    change_item,
    job_args,
    new_job,
    parse_job,
    unreadable_job,
)
from ._redis_topology import parse_topology
from ._redis_worker_path import WorkerPathMixin, _ClaimAsk, _Write
from .base import (
    Clock,
    EventStream,
    JobFilter,
    MessageStream,
    NewJob,
    QueueStats,
    RateLimit,
)

__all__ = ("RedisBackend",)

logger: logging.Logger = logging.getLogger(__name__)

_TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    # A cluster mid-failover: the slot's master is down or a new one is taking over.
    ClusterDownError,
    MasterDownError,
    TryAgainError,
    ReadOnlyError,
    RedisClusterException,
)


def _before_sending(exc: BaseException) -> bool:
    """Whether ``exc`` happened before a request could go out (connecting, refused)."""
    if isinstance(exc, (ConnectionRefusedError, ClusterDownError, TryAgainError, ReadOnlyError)):
        return True  # refused: a cluster mid-failover runs nothing it answers so
    # redis-py words every failure to connect "Error ... connecting to ..." / "Timeout
    # connecting to server"; failures after that (reading the reply) say otherwise.
    return "connecting to" in str(exc)


_CAS_TRIES = 5  # a compare-and-set that keeps losing a race gives up with an error


class RedisBackend(
    EnqueueMixin, WorkerPathMixin, LocalWritesMixin, PresenceMixin, LeasesMixin, HistoryMixin
):
    """Jobs in Redis, moved between states by Lua scripts.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://…`` for TLS;
            ``redis+cluster://host:port[,host:port…]`` for a Redis Cluster (every key then
            carries the hash tag ``{prefix}``: one slot per store);
            ``redis+sentinel://host:port[,host:port…]/service`` for a master watched by
            Sentinel. Query options ``prefix`` and ``events_maxlen`` are read here; the
            others go to redis-py (``ssl_ca_certs``, ``ssl_cert_reqs``, …).
        clock: seconds since the epoch; ``None`` uses the Redis server's clock.
        prefix: every key and channel starts with ``<prefix>:``.
        events_maxlen: about how many events the stream keeps for late readers.
        socket_timeout: seconds a command may take before the connection counts as lost.
        connect_timeout: seconds to wait for a connection.
        retry_for: how long an operation is retried while Redis cannot be reached, before
            it raises :class:`~afterwork.exceptions.BackendUnavailable`.
        finish_retry_for: the same for recording outcomes (safe to retry: fenced).

    Example:
        ```python
        aw = Afterwork("redis://localhost:6379/0?prefix=myapp")
        ```
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        prefix: str = "afterwork",
        events_maxlen: int = 10_000,
        socket_timeout: float = 5.0,
        connect_timeout: float = 1.0,
        retry_for: float = 2.0,
        finish_retry_for: float = 30.0,
        **redis_options: Any,
    ) -> None:
        if not prefix or any(c in prefix for c in " {}"):
            raise ConfigurationError(f"invalid Redis key prefix {prefix!r}")
        self.url: str = url
        self.prefix: str = prefix
        self._topology = parse_topology(url)
        # On a cluster every key is hash-tagged, so one store's keys share one slot and each
        # script touches one node; a single server keeps the untagged names it always had.
        self._keys = f"{{{prefix}}}" if self._topology.cluster else prefix
        self.events_key: str = f"{self._keys}:events"
        self._clock = clock
        self._maxlen = str(int(events_maxlen))
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._retry_for = retry_for
        self._finish_retry_for = finish_retry_for
        self._redis_options = redis_options
        self._redis: Any = None  # redis.asyncio.Redis, or RedisCluster
        self._blocking: Any = None
        self._offset = 0.0  # server clock minus local clock
        self._wake = Notifier()
        self._skipped = False
        self._rate_next: float | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._cancel_callbacks: list[Callable[[str], object]] = []
        # Starts and finishes waiting for the next script call (see _flush_writes).
        self._writes: list[_Write] = []
        self._claims: list[_ClaimAsk] = []  # claims riding in the next one
        # Jobs this process holds a lease on, as it last saw them: finish and begin compute
        # their change from these (nothing the transitions read changes while a lease holds).
        self._held: dict[str, tuple[str, Job]] = {}
        # Jobs a claim began that the worker has not begun yet (job id: lease token); a
        # release or cancel before then takes the start back (``claim(begin=n)``).
        self._prebegun: dict[str, str] = {}
        self._claiming = 0  # claims in flight
        self._early_cancels: dict[str, None] = {}  # cancels pushed while one was
        # After a claim that found fewer jobs than it asked for: its ticket, its queues and
        # when the next delayed job falls due (``wait_for_work`` then needs not look).
        self._after_claim: tuple[int, frozenset[str] | None, float | None] | None = None
        self._timelines: Timelines = {}  # decoded timelines by stored text (parse_job)
        self._flusher: asyncio.Task[None] | None = None
        # Concurrent enqueues waiting for the next script call (see enqueue).
        self._enq_loop: asyncio.AbstractEventLoop | None = None
        self._enq_busy = False
        self._enq_waiting: list[tuple[Sequence[NewJob], asyncio.Future[list[Job]]]] = []
        self._enq_flusher: asyncio.Task[None] | None = None
        self._enq_conn: Any = None  # the enqueue script's connection (_eval_enqueue)
        #: The app whose enqueues this store serves (set by ``Afterwork``): jobs created
        #: are returned attached to it.
        self.job_owner: JobOwner | None = None
        self._streams: set[StreamEvents] = set()
        self._channels: set[RedisChannel] = set()
        self._closed = True

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None, **options: Any) -> RedisBackend:
        """Build from a URL; ``?prefix=`` and ``?events_maxlen=`` become options."""
        parts = urlsplit(url)
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query):
            if name == "prefix":
                options.setdefault("prefix", value)
            elif name == "events_maxlen":
                options.setdefault("events_maxlen", int(value))
            else:
                rest.append((name, value))
        clean = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(clean, clock=clock, **options)

    def __repr__(self) -> str:
        return f"RedisBackend(prefix={self.prefix!r})"

    def _key(self, name: str) -> str:
        return f"{self._keys}:{name}"

    # -- lifecycle -----------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return time.time() + self._offset

    def _options(self, socket_timeout: float | None) -> dict[str, Any]:
        return {
            "decode_responses": True,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self._connect_timeout,
            "retry": RedisRetry(NoBackoff(), 0),
            "health_check_interval": 0,
            "client_name": f"afterwork:{self.prefix}",
            **self._redis_options,
        }

    def _client(self, socket_timeout: float | None) -> Any:
        return self._topology.client(self._options(socket_timeout))

    async def open(self) -> None:
        if not self._closed:
            return
        self._redis = self._client(self._socket_timeout)
        self._subscribed = asyncio.Event()  # bound to this loop on first use
        self._blocking = self._client(self._socket_timeout + 5.0)
        self._closed = False
        try:
            before = time.time()
            seconds, micros = await self._command("TIME")
            after = time.time()
            self._offset = int(seconds) + int(micros) / 1e6 - (before + after) / 2
            # No SCRIPT LOAD of every script here: Redis learns each one on first use
            # (EVAL after NOSCRIPT, see ``_eval``), so a worker's first claim does not wait
            # for fifteen scripts to compile (docs/benchmarks.md, issue 18).
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream.close()
        for channel in list(self._channels):
            channel.close()
        tasks = {t for t in (self._listener, self._flusher) if t is not None and not t.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            # redis-py's pub/sub read may swallow a cancel; the loop also checks _closed.
            await asyncio.wait(tasks, timeout=2.0)
        self._listener = self._flusher = None
        self._subscribed.clear()
        for client in (self._redis, self._blocking):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._redis = self._blocking = None
        await self._drop_hot()
        if self._enq_conn is not None:
            conn, self._enq_conn = self._enq_conn, None
            with contextlib.suppress(Exception):
                await conn.disconnect()
        with contextlib.suppress(Exception):
            await self._topology.aclose()
        self._wake.notify()

    # -- talking to Redis ----------------------------------------------------------------

    def _require(self) -> Any:
        if self._redis is None:
            raise RuntimeError("the Redis backend is not open; use `async with aw:`")
        return self._redis

    async def _command(self, *args: Any, retry_for: float | None = None) -> Any:
        return await self._retrying(lambda: execute(self._require(), *args), retry_for)

    async def _eval(
        self, script: Script, *args: str, retry_for: float | None = None, replay: int = -1
    ) -> Any:
        """Run ``script`` (``now`` and the key prefix go first); resend it after a restart.

        Every script gets one key, ``KEYS[1]`` = the events stream: it names the slot of all
        the store's keys, so a cluster client sends the script to the node that holds them
        (the scripts build their keys from ``ARGV[1]``, the prefix, in that same slot).
        """
        argv = [self._keys, "" if self._clock is None else repr(self._clock()), self._maxlen]
        argv.extend(args)

        async def call() -> Any:
            client = self._require()
            try:
                return await execute(client, "EVALSHA", script.sha, 1, self.events_key, *argv)
            except NoScriptError:  # not run: a restarted or newly promoted node
                return await execute(client, "EVAL", script.source, 1, self.events_key, *argv)

        def on_retry() -> None:
            if replay >= 0:
                argv[replay] = "1"  # a finish whose reply was lost may have been applied

        return await self._retrying(call, retry_for, on_retry)

    async def _retrying(
        self,
        call: Callable[[], Any],
        retry_for: float | None,
        on_retry: Callable[[], None] | None = None,
    ) -> Any:
        """Retry ``call`` with backoff while Redis cannot be reached, up to ``retry_for`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._retry_for if retry_for is None else retry_for)
        attempt = 0
        sent = False  # whether a request may have reached Redis (its reply then lost)
        while True:
            try:
                return await call()
            except _TRANSIENT as exc:
                attempt += 1
                sent = sent or not _before_sending(exc)
                delay = min(0.5, 0.02 * 2**attempt) * (0.5 + random.random() / 2)
                if self._closed or loop.time() + delay > deadline:
                    raise BackendUnavailable(
                        f"Redis cannot be reached: {exc}", may_have_applied=sent
                    ) from exc
                logger.debug("Redis unreachable (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                if on_retry is not None:
                    on_retry()
            except RedisError as exc:
                raise BackendError(f"Redis failed: {exc}") from exc

    # -- the Backend protocol ------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        try:
            record = await self._command("HMGET", self._key(f"job:{job_id}"), *FIELDS)
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            return unreadable_job(job_id, None, str(exc.__cause__ or exc))
        if record[0] is None and record[3] is None:
            return None
        return self._parse(record, job_id)

    async def cancel(self, job_id: str) -> Job | None:
        for _ in range(_CAS_TRIES):
            read = await self._read(job_id)
            if read is None:
                return await self.get(job_id)
            job, raw = read
            change = life.cancel(job, now=self.now())
            if change is None:
                return job
            expect = {"status": raw["status"], "cancel": raw["cancel"]}
            running = job.status is JobStatus.RUNNING
            item = change_item("cancel", change, expect=expect, cancelpub=running or None)
            (record,) = await self._apply([item])
            if record != 0:
                return self._parse(record, job_id)
        raise BackendError(f"job {job_id} kept changing; its cancel was not recorded")

    def _parse(self, record: list[Any], job_id: str | None = None) -> Job:
        try:
            return parse_job(record, self._timelines)
        except MalformedRecord as exc:
            return unreadable_job(job_id or str(record[0]), record, str(exc))

    # -- the QueuePause protocol -----------------------------------------------------------

    async def pause_queue(self, queue: str) -> None:
        await self._command("SADD", self._key("paused"), queue)

    async def resume_queue(self, queue: str) -> None:
        await self._command("SREM", self._key("paused"), queue)
        await self._command("PUBLISH", self._key("wake"), "1")  # its jobs are work again

    async def paused_queues(self) -> frozenset[str]:
        members = await self._command("SMEMBERS", self._key("paused"))
        return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def wait_for_work(self, queues: Sequence[str] | None, timeout: float) -> None:
        self._ensure_listener()
        ticket = self._wake.ticket()
        after, self._after_claim = self._after_claim, None
        if after is not None and after[1] == (frozenset(queues) if queues else None):
            # The claim just before found these queues empty (and passed nothing over):
            # wait from its ticket (a job enqueued since has woken it) until the next
            # delayed job it saw falls due, without looking again.
            ticket, _, next_due = after
            if next_due is not None:
                timeout = min(timeout, max(next_due - self.now(), 0.0))
        elif not self._skipped:
            # Look first, unless the last claim passed over jobs of tasks at their
            # concurrency limit: checking again would find them and spin, so then wait for
            # a finish or a new job instead (the next claim clears the flag).
            names = list(queues or ())
            try:
                due = float(await self._eval(SCRIPTS["peek"], str(len(names)), *names))
            except BackendError:
                due = -1.0  # Redis is away: wait, the claim loop will retry
            if due == 0:
                return
            if due > 0:
                timeout = min(timeout, due)
        elif self._rate_next is not None:
            # Passed over for a rate limit: sleep until its next start is allowed.
            timeout = min(timeout, max(self._rate_next - self.now(), 0.0))
        await self._wake.wait(ticket, timeout)

    def rate_next(self) -> float | None:
        """When a job the last claim passed over for a rate limit may start (store time)."""
        return self._rate_next

    async def rate_starts(self, group: str, rate: RateLimit) -> list[float]:
        """The recorded starts of a rate group still within its window."""
        now = self.now()
        pairs = await self._command(
            "ZRANGEBYSCORE", self._key(f"starts:{group}"), "-inf", "+inf", "WITHSCORES"
        )
        flat = (
            [x for pair in pairs for x in pair]
            if pairs and isinstance(pairs[0], list | tuple)
            else pairs
        )
        starts = [float(score) for score in flat[1::2]]
        # Claimed and not started: they count as starting now (the next claim drops those
        # released meanwhile, so this may count one too many until then).
        pending = int(await self._command("SCARD", self._key(f"rpend:{group}")))
        begun = [s for s in starts if not life.rate_expired(s, now=now, rate=rate)]
        return sorted(begun) + [now] * pending

    @property
    def event_retention(self) -> int:
        """About how many events the stream keeps (``events_maxlen``; trimmed with ``~``)."""
        return int(self._maxlen)

    # -- channels ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def channel_key(self, channel: str) -> str:
        return self._key(f"channel:{channel}")

    def new_client(self, *, socket_timeout: float | None) -> aioredis.Redis:
        """A client of its own for a subscriber's connection (on a cluster: to one node)."""
        return self._topology.subscriber(self._redis, self._options(socket_timeout))

    def forget_channel(self, channel: RedisChannel) -> None:
        self._channels.discard(channel)

    async def publish(self, channel: str, data: str) -> None:
        await self._command("PUBLISH", self.channel_key(channel), data)

    async def subscribe(self, channel: str) -> MessageStream:
        stream = RedisChannel(self, channel)
        await stream.start()
        self._channels.add(stream)
        return stream

    def events(self, since: str | None = None) -> EventStream:
        """Events from now on; with ``since`` (a stream id), first the kept ones after it.

        If entries after ``since`` may have been trimmed, a ``truncated`` marker comes first
        instead, then live events.
        """
        # Stream ids are the server's milliseconds: start a second before "now" so that
        # nothing published after this call can be missed (a few older events may come).
        start = int((time.time() + self._offset) * 1000) - 1000
        stream = StreamEvents(self, f"{max(start, 0)}-0", since)
        if self._closed:
            stream.close()
        self._streams.add(stream)
        return stream

    def watch_cancels(self, callback: Callable[[str], object]) -> Callable[[], None]:
        """Call ``callback(job_id)`` when someone asks to cancel a running job."""
        self._cancel_callbacks.append(callback)
        self._ensure_listener()

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._cancel_callbacks.remove(callback)

        return unwatch

    def _ensure_listener(self) -> None:
        if not self._closed and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._listen(), name="afterwork redis listener")

    async def _listen(self) -> None:
        """Relay the wake-up and cancel channels; reconnect while Redis is away."""
        wake, cancel = self._key("wake"), self._key("cancel")
        backoff = 0.05
        while not self._closed:
            self._require()
            client = self.new_client(socket_timeout=self._socket_timeout)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(wake, cancel)
                self._subscribed.set()
                self._wake.notify()  # anything enqueued while we were away: look again
                backoff = 0.05
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is None:
                        continue
                    if message["channel"] == cancel:
                        self._cancel_pushed(str(message["data"]))
                    else:
                        self._wake.notify()
            except Exception as exc:
                self._subscribed.clear()
                logger.debug("Redis listener lost its connection (%s); reconnecting", exc)
                self._wake.notify()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await client.aclose()

    # -- the Inspector protocol ----------------------------------------------------------

    async def list_jobs(self, filter: JobFilter) -> list[Job]:
        records = await self._eval(
            SCRIPTS["list"],
            filter.before or "",
            str(filter.limit),
            filter.queue or "",
            filter.task or "",
            *(JobStatus(s).value for s in filter.statuses),
        )
        return [self._parse(record) for record in records]

    async def due_or_running(self) -> int:
        return int(await self._eval(SCRIPTS["due"]))

    async def stats(self) -> list[QueueStats]:
        rows = await self._eval(SCRIPTS["stats"])
        result = []
        for queue, flat, oldest in sorted(rows):
            counts = dict.fromkeys(JobStatus, 0)
            for name, value in zip(flat[::2], flat[1::2], strict=True):
                with contextlib.suppress(ValueError):
                    counts[JobStatus(name)] = max(int(value), 0)
            result.append(
                QueueStats(
                    queue=queue, counts=counts, oldest_waiting_at=float(oldest) if oldest else None
                )
            )
        return result

    async def retry(self, job_id: str) -> Job | None:
        key_free = True
        for _ in range(_CAS_TRIES):
            read = await self._read(job_id)
            if read is None:
                return await self.get(job_id)
            job, raw = read
            if job.queue == "?":  # a quarantined record stays failed
                return job
            change = life.retry(job, now=self.now(), key_free=key_free)
            if change is None:
                return job
            keep = job.key if key_free else None
            item = change_item("retry", change, expect={"status": raw["status"]}, keyfree=keep)
            (record,) = await self._apply([item])
            if record != 0:
                return self._parse(record, job_id)
            key_free = False  # the key may be held by another job now: retry without it
        raise BackendError(f"job {job_id} kept changing; its retry was not recorded")

    async def purge(self, *, older_than: float | None = None) -> int:
        total = 0
        while True:
            deleted, scanned = await self._eval(
                SCRIPTS["purge"], "" if older_than is None else repr(float(older_than)), "1000"
            )
            total += int(deleted)
            if int(scanned) < 1000:
                return total

    # -- the Ticks protocol ---------------------------------------------------------------

    async def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> Job | None:
        reply = await self._eval(SCRIPTS["tick"], schedule, repr(float(tick)), *job_args(job))
        if not reply:
            return None
        now, existing = reply
        return new_job(job, float(now)) if existing == 0 else self._parse(existing)

    async def last_tick(self, schedule: str) -> float | None:
        value = await self._command("HGET", self._key("ticks"), schedule)
        return None if value is None else float(value)
