"""``aw.publish`` / ``aw.subscribe``: JSON messages between the processes sharing a store."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from .backends.base import ChannelMessage, MessageStream
from .exceptions import EnqueueError, PayloadTooLarge
from .task import text_problem

__all__ = ("MAX_CHANNEL", "Subscription", "encode_message")

logger: logging.Logger = logging.getLogger("afterwork.app")

#: The longest channel name, in characters.
MAX_CHANNEL = 200


def encode_message(channel: str, data: Any, max_payload: int) -> str:
    """``data`` as JSON text, checked (the channel's name too).

    Raises:
        EnqueueError: the channel name is empty, too long or has control characters, or
            ``data`` is not JSON (no NaN, no infinity).
        PayloadTooLarge: the JSON is larger than ``max_payload`` bytes.
    """
    problem = "is empty" if not channel else text_problem(channel, MAX_CHANNEL)
    if problem is not None:
        raise EnqueueError(f"a channel name {problem}: {channel!r}", field="channel")
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnqueueError(f"a message must be JSON: {exc}", field="data") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_payload:
        raise PayloadTooLarge(f"the message is {size} bytes, more than {max_payload}")
    return text


class Subscription:
    """The messages of one channel: ``async for message in aw.subscribe(channel)``.

    Subscribed at the first ``anext``, or on entering ``async with`` (then nothing
    published after the ``async with`` line is missed). Each item is a
    :class:`~afterwork.backends.base.ChannelMessage` whose ``data`` is the decoded JSON; one
    with ``missed=True`` says this subscriber lost messages there (it fell behind its
    bounded buffer, or its connection was lost).
    """

    def __init__(self, channel: str, open_stream: Callable[[], Awaitable[MessageStream]]) -> None:
        self.channel = channel
        self._open = open_stream
        self._stream: MessageStream | None = None
        self._closed = False

    async def _start(self) -> MessageStream:
        if self._stream is None:
            self._stream = await self._open()
        return self._stream

    async def __aenter__(self) -> Subscription:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ChannelMessage:
        if self._closed:
            raise StopAsyncIteration
        stream = await self._start()
        while True:
            message = await anext(stream)
            if message.missed:
                return message
            try:
                data = json.loads(message.data)
            except (TypeError, ValueError):
                logger.warning("channel %s: skipped a message that is not JSON", self.channel)
                continue
            return ChannelMessage(message.channel, data)

    async def aclose(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()
