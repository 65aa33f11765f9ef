"""The broadcaster behind in-process events: history, resuming after a position, lost items."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from afterwork._notify import Broadcaster, Notifier, Subscription

pytestmark = pytest.mark.anyio


def stamped(history: int, maxlen: int = 10_000) -> Broadcaster[str]:
    def stamp(item: str, position: int) -> str:
        return f"{position}:{item}"

    return Broadcaster(maxlen, history=history, stamp=stamp, lost=lambda: "lost")


async def take(subscription: Subscription[str], count: int) -> list[str]:
    with anyio.fail_after(5):
        return [await anext(subscription) for _ in range(count)]


async def test_positions_are_stamped_in_publishing_order() -> None:
    broadcaster = stamped(history=10)
    live = broadcaster.subscribe()
    assert [broadcaster.publish(x) for x in "abc"] == ["1:a", "2:b", "3:c"]
    assert broadcaster.position == 3
    assert await take(live, 3) == ["1:a", "2:b", "3:c"]
    await live.aclose()


async def test_subscribing_after_a_position_replays_then_goes_live() -> None:
    broadcaster = stamped(history=10)
    for x in "abcd":
        broadcaster.publish(x)
    resumed = broadcaster.subscribe(after=2, gap="gap")
    broadcaster.publish("e")
    assert await take(resumed, 3) == ["3:c", "4:d", "5:e"]
    await resumed.aclose()


async def test_a_position_out_of_the_history_gives_the_gap_item_first() -> None:
    broadcaster = stamped(history=3)
    for x in "abcdef":
        broadcaster.publish(x)  # keeps 4, 5, 6
    assert await take(broadcaster.subscribe(after=3, gap="gap"), 3) == ["4:d", "5:e", "6:f"]
    old = broadcaster.subscribe(after=2, gap="gap")  # 3 is gone
    future = broadcaster.subscribe(after=7, gap="gap")  # never given
    broadcaster.publish("g")
    assert await take(old, 2) == ["gap", "7:g"]
    assert await take(future, 2) == ["gap", "7:g"]


async def test_a_reader_that_falls_behind_is_told_it_lost_items() -> None:
    broadcaster = stamped(history=0, maxlen=2)
    slow = broadcaster.subscribe()
    for x in "abcd":
        broadcaster.publish(x)  # a and b are dropped from the reader's buffer
    assert await take(slow, 3) == ["lost", "3:c", "4:d"]
    broadcaster.publish("e")
    assert await take(slow, 1) == ["5:e"]  # told once per loss
    await slow.aclose()


async def test_a_replay_loaded_on_first_read_comes_before_live_items() -> None:
    broadcaster: Broadcaster[str] = Broadcaster()

    async def replay() -> list[str]:
        broadcaster.publish("live")  # published while the backlog is being loaded
        return ["old1", "old2"]

    subscription = broadcaster.subscribe(replay=replay)
    assert await take(subscription, 3) == ["old1", "old2", "live"]
    await subscription.aclose()


async def test_a_replay_interrupted_by_a_timeout_is_loaded_again() -> None:
    broadcaster: Broadcaster[str] = Broadcaster()
    calls = 0
    slow = anyio.Event()

    async def replay() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await slow.wait()  # never set: the reader gives up first
        return ["old"]

    subscription = broadcaster.subscribe(replay=replay)
    with anyio.move_on_after(0.01):
        await anext(subscription)
    broadcaster.publish("live")
    assert await take(subscription, 2) == ["old", "live"]
    assert calls == 2
    await subscription.aclose()


async def test_a_notifier_wakes_a_waiter_of_its_own_thread_without_a_cross_thread_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()

    def refused(*args: object) -> None:
        raise AssertionError("call_soon_threadsafe from the loop's own thread")

    notifier = Notifier()
    ticket = notifier.ticket()
    waiting = asyncio.ensure_future(notifier.wait(ticket, 5.0))
    await asyncio.sleep(0)  # the waiter is registered
    with monkeypatch.context() as patched:
        patched.setattr(loop, "call_soon_threadsafe", refused)
        notifier.notify()  # no write to the loop's self-pipe: its own thread runs it
    assert await waiting is True


async def test_a_notifier_wakes_a_waiter_from_another_thread() -> None:
    notifier = Notifier()
    ticket = notifier.ticket()
    waiting = asyncio.ensure_future(notifier.wait(ticket, 5.0))
    await asyncio.sleep(0)
    await anyio.to_thread.run_sync(notifier.notify)
    assert await waiting is True
