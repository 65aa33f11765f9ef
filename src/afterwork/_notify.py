"""Thread-safe wake-ups and event fan-out that work across event loops.

A backend may be used from the event loop of a web app and from a sync caller's portal
loop at the same time, so these primitives never assume a single loop: waiters are woken
with ``call_soon_threadsafe`` on their own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ("Broadcaster", "Notifier", "Subscription")

T = TypeVar("T")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Notifier:
    """A versioned wake-up signal.

    Take a ``ticket()`` *before* checking for work, then ``wait(ticket, timeout)``: a
    ``notify()`` between the two is never lost, because the version has moved on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def ticket(self) -> int:
        with self._lock:
            return self._version

    def notify(self) -> None:
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, []
        if not waiters:
            return
        here = asyncio._get_running_loop()
        for loop, future in waiters:
            if loop is here:  # this thread runs it: no wake-up write to its self-pipe
                loop.call_soon(_resolve, future)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, ticket: int, timeout: float) -> bool:
        """Wait for a notify after ``ticket``; ``True`` if one came, ``False`` on timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._version != ticket:
                return True
            self._waiters.append((loop, future))
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                try:
                    self._waiters.remove((loop, future))
                except ValueError:
                    pass


#: Loads a subscription's backlog on its first read (items published before it subscribed).
Replay = Callable[[], Awaitable[Sequence[T]]]


class _Subscriber(Generic[T]):
    __slots__ = ("dropped", "items", "loop", "wakeup")

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int) -> None:
        self.loop = loop
        self.items: deque[T | None] = deque(maxlen=maxlen)
        self.wakeup = Notifier()
        self.dropped = 0


class Broadcaster(Generic[T]):
    """Fan items out to every subscriber; a slow subscriber loses its oldest items.

    Publishing never blocks and never fails because of a subscriber. With ``lost``, a
    subscriber that lost items reads ``lost()`` before the items it still has.

    With ``history``, the last ``history`` items are kept with their positions (1, 2, 3, …
    in publishing order; ``stamp`` writes the position into the item), and a subscriber
    may start after a position: the retained items after it come first, then live ones,
    with nothing missed and nothing twice, because both are taken under one lock.
    """

    def __init__(
        self,
        maxlen: int = 10_000,
        *,
        history: int = 0,
        stamp: Callable[[T, int], T] | None = None,
        lost: Callable[[], T] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber[T]] = []
        self._maxlen = maxlen
        self._closed = False
        self._history: deque[tuple[int, T]] = deque(maxlen=max(history, 1))
        self._keep = history > 0
        self._stamp = stamp
        self._lost = lost
        self._position = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def position(self) -> int:
        """The position of the last item published (0: none yet)."""
        return self._position

    def publish(self, item: T) -> T:
        """Hand ``item`` to every subscriber; return it (stamped with its position)."""
        with self._lock:
            # Under the lock, so that a subscriber starting after a position sees each item
            # exactly once: in its backlog or live, never both.
            self._position += 1
            if self._stamp is not None:
                item = self._stamp(item, self._position)
            if self._keep:
                self._history.append((self._position, item))
            subscribers = list(self._subscribers)
            for sub in subscribers:
                if len(sub.items) == sub.items.maxlen:
                    sub.dropped += 1
                sub.items.append(item)
        for sub in subscribers:
            sub.wakeup.notify()
        return item

    def close(self) -> None:
        """End every subscription (each iterator returns after draining what it has)."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = self._subscribers, []
            for sub in subscribers:
                sub.items.append(None)
        for sub in subscribers:
            sub.wakeup.notify()

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def subscribe(
        self,
        *,
        after: int | None = None,
        gap: T | None = None,
        replay: Replay[T] | None = None,
    ) -> Subscription[T]:
        """Items published from now on (the subscription starts at once), until :meth:`close`.

        Args:
            after: a position: first the kept items after it, then live ones. If items
                after it are no longer kept (or it is not a position this broadcaster
                gave), ``gap`` comes first instead, then live items.
            gap: the item that says "history truncated".
            replay: items to yield before the live ones, loaded on the first read (a
                backlog kept elsewhere, e.g. in a table).
        """
        backlog: list[T] = []
        with self._lock:
            closed = self._closed
            if after is not None:
                backlog = self._backlog(after, gap)
            sub: _Subscriber[T] = _Subscriber(
                asyncio.get_running_loop(), self._maxlen + len(backlog)
            )
            sub.items.extend(backlog)
            if not closed:
                self._subscribers.append(sub)
        if closed:
            sub.items.append(None)
        return Subscription(self, sub, replay)

    def _backlog(self, after: int, gap: T | None) -> list[T]:
        oldest = self._history[0][0] if self._history else self._position + 1
        if not self._keep or after > self._position or after < oldest - 1:
            return [] if gap is None else [gap]
        return [item for position, item in self._history if position > after]

    def _prepend(self, sub: _Subscriber[T], items: Sequence[T]) -> None:
        if items:
            with self._lock:  # publish appends under this lock: no item is lost in the swap
                sub.items = deque([*items, *sub.items], maxlen=(sub.items.maxlen or 0) + len(items))

    def _remove(self, sub: _Subscriber[T]) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)


class Subscription(Generic[T]):
    """An async iterator over a broadcaster's items; ``aclose()`` unsubscribes."""

    def __init__(
        self, owner: Broadcaster[T], sub: _Subscriber[T], replay: Replay[T] | None = None
    ) -> None:
        self._owner = owner
        self._sub = sub
        self._replay = replay
        self._reported = 0
        self._done = False

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        sub = self._sub
        if self._replay is not None:
            # Cancelled (a reader's timeout) or failed: kept, so the next read loads it again.
            backlog = await self._replay()
            self._replay = None
            self._owner._prepend(sub, backlog)
        while not self._done:
            ticket = sub.wakeup.ticket()
            if sub.dropped != self._reported and self._owner._lost is not None:
                self._reported = sub.dropped  # this reader fell behind: say so, not silently
                return self._owner._lost()
            if sub.items:
                item = sub.items.popleft()
                if item is None:
                    break
                return item
            await sub.wakeup.wait(ticket, 3600.0)
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._done = True
        self._owner._remove(self._sub)
