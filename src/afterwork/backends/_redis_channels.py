"""Channels on Redis: ``PUBLISH`` / ``SUBSCRIBE``, one connection per subscriber.

Redis delivers each message at most once to every connection subscribed when it is
published, in the order each publisher's commands ran, and never blocks a publisher: a
subscriber too slow for its output buffer (``client-output-buffer-limit pubsub``) is
disconnected by the server. The subscriber then reconnects, subscribes again and reads a
``missed`` marker first; so does one whose connection dropped for another reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .base import ChannelMessage

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from .redis import RedisBackend

__all__ = ("RedisChannel",)

logger: logging.Logger = logging.getLogger(__name__)


class RedisChannel:
    """The messages of one channel, for one subscriber."""

    def __init__(self, backend: RedisBackend, channel: str) -> None:
        self._backend = backend
        self.channel = channel
        self._key = backend.channel_key(channel)
        self._client: Any = None
        self._pubsub: PubSub | None = None
        self._missed = False
        self._done = False

    async def start(self) -> RedisChannel:
        """Subscribe; return once Redis confirmed the subscription."""
        await self._connect()
        return self

    async def _connect(self) -> None:
        self._client = self._backend.new_client(socket_timeout=None)
        pubsub = self._client.pubsub()
        await pubsub.subscribe(self._key)
        while True:  # the confirmation: from here on, every message reaches this subscriber
            reply = await pubsub.get_message(timeout=5.0)
            if reply is not None and reply.get("type") == "subscribe":
                break
        self._pubsub = pubsub

    def __aiter__(self) -> RedisChannel:
        return self

    async def __anext__(self) -> ChannelMessage:
        backoff = 0.05
        while True:
            if self._missed:
                self._missed = False
                return ChannelMessage(self.channel, None, missed=True)
            if self._done or self._backend.closed:
                await self.aclose()
                raise StopAsyncIteration
            try:
                if self._pubsub is None:
                    await self._connect()
                    self._missed = True  # whatever was published meanwhile is lost
                    backoff = 0.05
                    continue
                reply = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                logger.debug(
                    "channel %s: connection lost (%s); subscribing again", self.channel, exc
                )
                await self._disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if reply is not None and reply.get("type") == "message":
                return ChannelMessage(self.channel, reply["data"])

    async def _disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    def close(self) -> None:
        self._done = True

    async def aclose(self) -> None:
        self._done = True
        self._backend.forget_channel(self)
        await self._disconnect()
