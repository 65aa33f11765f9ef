"""What the stores share to implement channels (``aw.publish`` / ``aw.subscribe``)."""

from __future__ import annotations

from .._notify import Broadcaster
from .base import ChannelMessage

__all__ = ("CHANNEL_BUFFER", "channel_broadcaster")

#: Messages a subscriber may fall behind by before it loses the oldest (and is told so).
CHANNEL_BUFFER = 1000


def channel_broadcaster(channel: str, maxlen: int = CHANNEL_BUFFER) -> Broadcaster[ChannelMessage]:
    """A fan-out with a bounded buffer per subscriber; a subscriber that lost messages
    reads a ``missed`` marker first."""
    return Broadcaster(maxlen=maxlen, lost=lambda: ChannelMessage(channel, None, missed=True))
