"""What the PostgreSQL store's mixins (``_pg_enqueue_path``, ``_pg_worker_path``,
``_pg_listen``) use of :class:`~afterwork.backends.postgres.PostgresBackend`: declared for
the type checker only (nothing at run time), and the retry constants they share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

if TYPE_CHECKING:
    from .._notify import Notifier
    from ..job import Job, JobOwner
    from ._pg_events import EventPump
    from ._pg_rows import Tx
    from ._pg_worker_path import _Pending
    from .base import NewJob

__all__ = ("_RETRIES", "_RETRYABLE", "Host")

T = TypeVar("T")

_RETRIES = 5
_RETRYABLE = (asyncpg.exceptions.TransactionRollbackError,)


class Host:
    """The base of the mixins: the attributes and methods they use of the store."""

    if TYPE_CHECKING:
        schema: str
        _s: str
        job_owner: JobOwner | None
        _pool: asyncpg.Pool | None
        _listener: asyncio.Task[None] | None
        _cancel_callbacks: list[Callable[[str], object]]
        _work: Notifier
        _pump: EventPump
        _poll_interval: float
        _max_poll_interval: float
        _event_retention: int
        _flow_skipped: bool
        _conc_skipped: bool
        _rate_next: float | None
        _flow_wait: float
        _finishes: list[_Pending]
        _finisher: asyncio.Task[None] | None
        _held: dict[str, tuple[str, Job]]
        _prebegun: dict[str, str]
        _claiming: int
        _early_cancels: dict[str, None]
        _after_claim: tuple[int, frozenset[str] | None, float | None] | None
        _enqueues: deque[tuple[Sequence[NewJob], asyncio.Future[list[Job]]]]
        _enqueuer: asyncio.Task[None] | None
        _store_id: str | None

        def now(self) -> float:
            raise NotImplementedError

        def _channel(self, name: str) -> str:
            raise NotImplementedError

        def _errors(self, *, sent: bool = True) -> contextlib.AbstractContextManager[None]:
            raise NotImplementedError

        def _conn(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
            raise NotImplementedError

        async def _connect(self) -> asyncpg.Connection:
            raise NotImplementedError

        async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
            raise NotImplementedError

        async def _write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
            raise NotImplementedError

        async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
            raise NotImplementedError

        async def _publish(self, tx: Tx) -> None:
            raise NotImplementedError

        def _count_events(self, count: int) -> int:
            raise NotImplementedError

        async def _trim_events(self, conn: asyncpg.Connection, batch: int) -> None:
            raise NotImplementedError

        def _trim_later(self, batch: int) -> None:
            raise NotImplementedError

        def _deliver_cancel(self, job_id: str) -> None:
            raise NotImplementedError

        async def _paused(self, conn: asyncpg.Connection) -> list[str]:
            raise NotImplementedError

        def _ready_where(
            self, queues: Sequence[str] | None, excluded: list[str], held: list[str]
        ) -> tuple[str, list[Any]]:
            raise NotImplementedError
