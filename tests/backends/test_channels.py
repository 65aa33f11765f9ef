"""``aw.publish`` / ``aw.subscribe`` on every store (issue 16): delivered to every
subscriber of every instance sharing the store, in order, at most once, bounded."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from afterwork import Afterwork
from afterwork.backends._channels import CHANNEL_BUFFER
from afterwork.backends.base import ChannelMessage
from afterwork.exceptions import EnqueueError, PayloadTooLarge

from .conftest import AwFactory

pytestmark = pytest.mark.anyio


def sharing(make_aw: AwFactory, backend_name: str, first: Afterwork) -> Afterwork:
    """Another instance on the same store: another process's view (memory: the same)."""
    return first if backend_name == "memory" else make_aw()


async def test_every_subscriber_gets_each_message_once_in_order(
    make_aw: AwFactory, backend_name: str
) -> None:
    publisher = make_aw()
    other = sharing(make_aw, backend_name, publisher)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(publisher)
        if other is not publisher:
            await stack.enter_async_context(other)
        await publisher.publish("screen", {"before": "nobody listens"})
        here = await stack.enter_async_context(publisher.subscribe("screen"))
        there = await stack.enter_async_context(other.subscribe("screen"))
        elsewhere = await stack.enter_async_context(other.subscribe("another"))
        for n in range(20):
            await publisher.publish("screen", {"ticket": f"A{n:03}"})
        await publisher.publish("another", [1, 2.5, None, "é"])
        for subscription in (here, there):
            with anyio.fail_after(10):
                got = [await anext(subscription) for _ in range(20)]
            assert got == [ChannelMessage("screen", {"ticket": f"A{n:03}"}) for n in range(20)]
        with anyio.fail_after(10):
            assert await anext(elsewhere) == ChannelMessage("another", [1, 2.5, None, "é"])
        # Nothing more came (at most once): a later message is the next one read.
        await publisher.publish("screen", "last")
        with anyio.fail_after(10):
            assert (await anext(there)).data == "last"


async def test_a_slow_subscriber_is_told_it_missed_messages(
    make_aw: AwFactory, backend_name: str
) -> None:
    if backend_name.startswith("redis"):
        pytest.skip("Redis bounds a subscriber server-side: see the reconnect test")
    aw = make_aw()
    total = CHANNEL_BUFFER + 50
    read: list[ChannelMessage] = []
    async with aw, aw.subscribe("busy") as slow:
        for n in range(total):  # never blocks, whoever listens
            await aw.publish("busy", n)
        with anyio.fail_after(10):
            while not read or read[-1].data != total - 1:
                read.append(await anext(slow))
    # Lost messages are never lost silently: a marker stands before every gap.
    assert any(m.missed for m in read)
    expected, gap_told = 0, False
    for message in read:
        if message.missed:
            gap_told = True
            continue
        assert message.data >= expected
        assert message.data == expected or gap_told, f"{message.data} came without a marker"
        expected, gap_told = message.data + 1, False
    kept = [m.data for m in read if not m.missed]
    assert len(kept) >= CHANNEL_BUFFER  # a full buffer's worth, the newest


async def test_redis_a_subscriber_whose_connection_dropped_is_told(
    make_aw: AwFactory, backend_name: str, request: pytest.FixtureRequest
) -> None:
    if not backend_name.startswith("redis"):
        pytest.skip("Redis only")
    aw = make_aw()
    async with aw, aw.subscribe("busy") as sub:
        await aw.publish("busy", 1)
        with anyio.fail_after(10):
            assert (await anext(sub)).data == 1
        # What Redis does to a subscriber over its output buffer limit: disconnect it.
        if backend_name == "redis":
            clients = [aw.backend.new_client(socket_timeout=5)]  # type: ignore[attr-defined]
        else:  # on a cluster the subscriber talks to one node, any of them
            from redis.asyncio import Redis

            cluster = request.getfixturevalue("redis_cluster")
            clients = [Redis(port=node.port, socket_timeout=5) for node in cluster.nodes]
        for client in clients:
            try:
                await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            finally:
                await client.aclose()
        with anyio.fail_after(10):
            marker = await anext(sub)
            assert marker.missed
        await aw.publish("busy", 2)  # subscribed again: delivered
        with anyio.fail_after(10):
            assert (await anext(sub)).data == 2


async def test_channel_messages_stay_out_of_job_events(aw: Afterwork) -> None:
    @aw.task
    async def noop() -> None: ...

    events = aw.events()
    try:
        await aw.publish("screen", "hello")
        job = await noop.enqueue()
        with anyio.fail_after(10):
            event = await anext(events)
        assert event.job_id == job.id  # the message was not a job event
    finally:
        await events.aclose()


async def test_bad_messages_are_refused(aw: Afterwork) -> None:
    with pytest.raises(EnqueueError, match="JSON"):
        await aw.publish("screen", float("nan"))
    with pytest.raises(EnqueueError, match="JSON"):
        await aw.publish("screen", object())
    with pytest.raises(EnqueueError, match="channel"):
        await aw.publish("bad\nname", 1)
    with pytest.raises(PayloadTooLarge):
        await aw.publish("screen", "x" * (aw.config.max_payload + 1))
