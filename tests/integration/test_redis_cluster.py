"""The Redis store on a Redis Cluster (``redis+cluster://``) and behind Sentinel.

The conformance suite runs on the session's 3-master + 3-replica cluster (the
``redis-cluster`` entry of ``tests/backends/conftest.py``). Here: where the keys live, the
URL forms, and a master killed with SIGKILL mid-drain, its replica taking over.
"""

from __future__ import annotations

import gc
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from afterwork import Afterwork, JobStatus
from afterwork._location import redact_url
from afterwork.backends.redis import RedisBackend
from afterwork.exceptions import BackendUnavailable, ConfigurationError

from ..redis_cluster import RedisCluster
from ..redis_sentinel import RedisSentinel
from .redis_chaos_jobs import chaos as chaos_task
from .test_redis_chaos import Fleet, all_succeeded, enqueue, until

pytestmark = pytest.mark.anyio


async def keys_on_each_node(cluster: RedisCluster, pattern: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        raw = aioredis.Redis(port=node.port, decode_responses=True)
        try:
            if "master" not in str(await raw.execute_command("ROLE")):  # type: ignore[no-untyped-call]
                continue
            keys = [key async for key in raw.scan_iter(match=pattern, count=1000)]
        finally:
            await raw.aclose()
        if keys:
            found[node.port] = keys
    return found


async def test_a_stores_keys_share_one_slot_on_one_master(redis_cluster: RedisCluster) -> None:
    prefix = f"aw{uuid.uuid4().hex[:8]}"
    aw = Afterwork(f"{redis_cluster.url}?prefix={prefix}")

    @aw.task(name="add", queue="a")
    async def add(x: int) -> int:
        return x + 1

    @aw.task(name="other", queue="b")
    async def other() -> None: ...

    async with aw:
        await add.enqueue(1)
        await other.enqueue()
        await add.enqueue(2)
        assert await aw.drain() == 3
        await aw.pause("b")
    found = await keys_on_each_node(redis_cluster, f"*{prefix}*")
    assert len(found) == 1, f"the store's keys are spread over masters: {found}"
    (keys,) = found.values()
    assert all(key.startswith(f"{{{prefix}}}:") for key in keys), keys
    # every kind of key is there: jobs, the stream, stats, pauses, the index
    names = {key.split(":")[1] for key in keys}
    assert {"job", "events", "stats", "paused", "all", "done"} <= names, names


async def test_a_single_server_keeps_its_key_names(redis_url: str) -> None:
    """Plain ``redis://`` is unchanged: no hash tag, so existing data stays readable."""
    prefix = f"aw{uuid.uuid4().hex[:8]}"
    aw = Afterwork(f"{redis_url}?prefix={prefix}")

    @aw.task(name="noop")
    async def noop() -> None: ...

    async with aw:
        job = await noop.enqueue()
        raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            keys = {key async for key in raw.scan_iter(match=f"*{prefix}*")}
        finally:
            await raw.aclose()
    assert f"{prefix}:job:{job.id}" in keys
    assert f"{prefix}:events" in keys
    assert not any("{" in key for key in keys)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:7000/3",
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/mymaster/x",
        "redis+cluster://127.0.0.1:port",
        "redis+cluster://a:1,:2",
    ],
)
def test_bad_cluster_and_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend.from_url(url)


def test_the_url_forms_are_understood() -> None:
    cluster = RedisBackend.from_url("redis+cluster://a:1,b:2?prefix=x")
    assert cluster._topology.hosts == [("a", 1), ("b", 2)]
    assert cluster.events_key == "{x}:events"
    sentinel = RedisBackend.from_url("redis+sentinel://u:p@a:26379,b:26380/main/2?prefix=y")
    assert sentinel._topology.service == "main" and sentinel._topology.db == 2
    assert sentinel._topology.password == "p"
    assert sentinel.events_key == "y:events"  # not a cluster: the names a server always had
    # logs and `afterwork jobs` show the location without its password, every host kept
    assert redact_url("redis+cluster://u:pw@a:1,b:2?prefix=x") == (
        "redis+cluster://u:***@a:1,b:2?prefix=x"
    )


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of its own: this test kills one of its masters."""
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.chaos
@pytest.mark.slow
# redis-py drops the cluster nodes a failover removed from its topology with connections
# still open; it warns when they are collected (ResourceWarning). They are collected here
# (gc below), so the warning cannot land on a later test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.fleet
async def test_a_master_killed_mid_drain_fails_over_and_loses_nothing(
    own_cluster: RedisCluster, tmp_path: Path
) -> None:
    url = f"{own_cluster.url}?prefix=afterwork"
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    fleet = Fleet(url, ledger)
    client = Afterwork(backend=RedisBackend.from_url(url, retry_for=15.0))
    impatient = Afterwork(backend=RedisBackend.from_url(url, retry_for=0.3))
    for aw in (client, impatient):
        aw.register(chaos_task.func, name="chaos")
    try:
        async with client, impatient:
            fleet.spawn()
            fleet.spawn()
            # Both workers open their store before the kill: a worker still opening it gives
            # up after its open retry (a start-up during an outage), which is not this test.
            await until(lambda: workers_up(client, 2), 60, "both workers to open the store")
            ids = await enqueue(client, 80, 0.05)
            await until(
                lambda: sum(r["ev"] == "end" for r in fleet.records()) >= 15, 60, "jobs to run"
            )
            master = own_cluster.master_of("{afterwork}:events")
            master.kill()  # SIGKILL
            # Until a replica takes over, the store answers with a typed error, in bounded time.
            with pytest.raises(BackendUnavailable):
                await enqueue(impatient, 1, 0.0, start=1000)
            assert own_cluster.wait_master("{afterwork}:events") is not master
            ids += await enqueue(client, 20, 0.05, start=100)  # acknowledged after failover
            await until(lambda: all_succeeded(client, ids), 90, "every acknowledged job")
            for job_id in ids:
                job = await client.get_job(job_id)
                assert job is not None and job.status is JobStatus.SUCCEEDED, job
            events = await client.backend._command(  # type: ignore[attr-defined]
                "XRANGE", "{afterwork}:events", "-", "+"
            )
            completions = Counter(data["j"] for _, data in events if data["k"] == "succeeded")
            assert all(completions[job_id] == 1 for job_id in ids), "a duplicate completion"
            ended = {r["job"] for r in fleet.records() if r["ev"] == "end"}
            assert set(ids) <= ended, "every job ran to its end"
            assert all(proc.poll() is None for proc in fleet.procs), "workers survived"
    finally:
        fleet.stop_all()
        gc.collect()


async def workers_up(aw: Afterwork, count: int) -> bool:
    return len(await aw.workers()) >= count


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    watched = RedisSentinel(tmp_path / "sentinel")
    try:
        watched.start()
        yield watched
    finally:
        watched.stop()


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.fleet
async def test_sentinel_finds_the_master_and_follows_a_failover(sentinel: RedisSentinel) -> None:
    aw = Afterwork(backend=RedisBackend.from_url(f"{sentinel.url}?prefix=s", retry_for=15.0))
    ran: list[int] = []

    @aw.task(name="note")
    async def note(n: int) -> int:
        ran.append(n)
        return n

    async with aw:
        first = [await note.enqueue(n) for n in range(5)]
        assert await aw.drain() == 5
        # the replica has every write before its master dies (WAIT: replication is async)
        raw = aioredis.Redis(port=sentinel.master.port)
        try:
            assert await raw.wait(1, 5000) == 1
        finally:
            await raw.aclose()
        old = sentinel.master_port()
        assert old == sentinel.master.port
        sentinel.master.kill()  # SIGKILL
        await until(lambda: sentinel.master_port() == sentinel.replica.port, 30, "a failover")
        second = [await note.enqueue(n) for n in range(5, 10)]  # reaches the new master
        assert await aw.drain() == 5
        for job in first + second:
            got = await aw.get_job(job.id)
            assert got is not None and got.status is JobStatus.SUCCEEDED, got
    assert sorted(ran) == list(range(10))
