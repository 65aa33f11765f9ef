"""Named leases (the ``Leases`` protocol) on every store: exclusive, expiring, fenced."""

from __future__ import annotations

import pytest

from afterwork import Afterwork
from afterwork.backends.base import LeaseInfo, Leases
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio


def leases(aw: Afterwork) -> Leases:
    store = aw.backend
    assert isinstance(store, Leases)
    return store


async def test_a_lease_has_one_holder_until_it_expires(aw: Afterwork, clock: FakeClock) -> None:
    store = leases(aw)
    start = clock()
    first = await store.acquire_lease("svc:a", "holder-1", ttl=10.0)
    assert first is not None
    assert await store.acquire_lease("svc:a", "holder-2", ttl=10.0) is None
    other = await store.acquire_lease("svc:b", "holder-2", ttl=5.0)
    assert other is not None and other != first
    assert await store.list_leases() == [
        LeaseInfo(name="svc:a", holder="holder-1", acquired_at=start, expires_at=start + 10.0),
        LeaseInfo(name="svc:b", holder="holder-2", acquired_at=start, expires_at=start + 5.0),
    ]
    clock.advance(9.0)
    assert await store.acquire_lease("svc:a", "holder-2", ttl=10.0) is None
    assert [lease.name for lease in await store.list_leases()] == ["svc:a"]  # svc:b expired
    clock.advance(1.0)  # now == expires_at: no longer held
    assert await store.list_leases() == []
    second = await store.acquire_lease("svc:a", "holder-2", ttl=10.0)
    assert second is not None and second != first
    (held,) = await store.list_leases()
    assert (held.holder, held.acquired_at) == ("holder-2", clock())


async def test_renewal_extends_only_the_current_holder(aw: Afterwork, clock: FakeClock) -> None:
    store = leases(aw)
    token = await store.acquire_lease("svc", "h1", ttl=10.0)
    assert token is not None
    clock.advance(8.0)
    assert await store.renew_lease("svc", token, ttl=10.0)
    clock.advance(8.0)  # 16 s after acquiring: alive thanks to the renewal
    assert await store.acquire_lease("svc", "h2", ttl=10.0) is None
    assert await store.renew_lease("svc", "not-the-token", ttl=10.0) is False
    (held,) = await store.list_leases()
    assert held.expires_at == clock() + 2.0
    assert await store.renew_lease("nothing", token, ttl=10.0) is False


async def test_an_expired_lease_cannot_be_renewed(aw: Afterwork, clock: FakeClock) -> None:
    store = leases(aw)
    token = await store.acquire_lease("svc", "h1", ttl=10.0)
    assert token is not None
    clock.advance(10.5)
    assert await store.renew_lease("svc", token, ttl=10.0) is False  # nobody took it, still lost
    assert await store.list_leases() == []


async def test_a_stale_holder_cannot_renew_or_release_after_a_takeover(
    aw: Afterwork, clock: FakeClock
) -> None:
    store = leases(aw)
    stale = await store.acquire_lease("svc", "h1", ttl=10.0)
    assert stale is not None
    clock.advance(11.0)
    fresh = await store.acquire_lease("svc", "h2", ttl=10.0)
    assert fresh is not None and fresh != stale
    assert await store.renew_lease("svc", stale, ttl=10.0) is False
    assert await store.release_lease("svc", stale) is False
    (held,) = await store.list_leases()
    assert held.holder == "h2" and held.expires_at == clock() + 10.0
    assert await store.renew_lease("svc", fresh, ttl=10.0)


async def test_release_frees_the_lease_at_once(aw: Afterwork, clock: FakeClock) -> None:
    store = leases(aw)
    token = await store.acquire_lease("svc", "h1", ttl=10.0)
    assert token is not None
    assert await store.release_lease("svc", token)
    assert await store.release_lease("svc", token) is False  # twice: nothing more to free
    assert await store.list_leases() == []
    assert await store.renew_lease("svc", token, ttl=10.0) is False
    assert await store.acquire_lease("svc", "h2", ttl=10.0) is not None
