"""Where the Redis backend's server is: one node, a Redis Cluster, or a Sentinel-watched master.

URL forms (the query options ``prefix`` and ``events_maxlen`` are read by the backend; the
others go to redis-py)::

    redis://[user:password@]host:port/db            one server (rediss:// for TLS)
    redis+cluster://[user:password@]host:port[,host:port...]   a Redis Cluster (rediss+cluster)
    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]
                                                    the master Sentinel names ``service``

On a cluster, every key of one store carries the hash tag ``{prefix}``, so all of them live in
one slot and each Lua script touches one node (see ``docs/redis.md``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from ..exceptions import ConfigurationError

__all__ = ("Topology", "parse_topology")

_KINDS = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


def _hosts(netloc: str, url: str) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for part in netloc.rpartition("@")[2].split(","):
        part = part.strip()
        host, port = part, "6379"  # "host" alone, or "[::1]" alone
        if part.count(":") == 1 or (part.startswith("[") and "]:" in part):
            host, _, port = part.rpartition(":")
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ConfigurationError(f"bad host:port {part!r} in Redis URL") from None
    if not hosts or any(not host for host, _ in hosts):
        raise ConfigurationError(f"no host in Redis URL {url!r}")
    return hosts


@dataclass
class Topology:
    """How to build clients: ``kind`` is ``single``, ``cluster`` or ``sentinel``."""

    kind: str
    url: str
    tls: bool = False
    hosts: list[tuple[str, int]] = field(default_factory=list)
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    _sentinel: Sentinel | None = None

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def _auth(self) -> dict[str, Any]:
        auth: dict[str, Any] = {}
        if self.username:
            auth["username"] = self.username
        if self.password:
            auth["password"] = self.password
        if self.tls:
            auth["ssl"] = True
        return auth

    def client(self, options: dict[str, Any]) -> Any:
        """A client for commands: ``redis.asyncio.Redis`` or ``RedisCluster``."""
        if self.kind == "single":
            return aioredis.Redis.from_url(self.url, **options)
        options = {**self._auth(), **self.query, **options}
        if self.kind == "cluster":
            nodes = [ClusterNode(host, port) for host, port in self.hosts]
            return RedisCluster(startup_nodes=nodes, **options)
        if self._sentinel is None:
            sentinel_options = {
                k: v for k, v in options.items() if k.startswith("socket_") or k == "ssl"
            }
            self._sentinel = Sentinel(self.hosts, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        return self._sentinel.master_for(
            self.service, redis_class=aioredis.Redis, db=self.db, **options
        )

    async def aclose(self) -> None:
        """Close the connections to the Sentinels (clients close their own)."""
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                await client.aclose()

    def subscriber(self, commands: Any, options: dict[str, Any]) -> aioredis.Redis:
        """A plain client for a pub/sub connection.

        On a cluster it talks to one node, picked at random: ``PUBLISH`` reaches every node
        of a cluster, so any one serves, and after a failure the next try may pick another.
        """
        if self.kind != "cluster":
            return self.client(options)  # type: ignore[no-any-return]
        nodes = [(n.host, n.port) for n in commands.get_nodes()] or self.hosts
        host, port = random.choice(nodes)
        options = {**self._auth(), **self.query, **options}
        return aioredis.Redis(host=host, port=port, **options)


def parse_topology(url: str) -> Topology:
    """The topology a URL names (its ``prefix``/``events_maxlen`` already removed)."""
    parts = urlsplit(url)
    kind, tls = _KINDS.get(parts.scheme.lower(), ("single", False))
    if kind == "single":
        return Topology(kind, url, tls)
    query = dict(parse_qsl(parts.query))
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    topology = Topology(
        kind, url, tls, _hosts(parts.netloc, url), username=username, password=password, query=query
    )
    path = [p for p in parts.path.split("/") if p]
    if kind == "cluster":
        if path and path != ["0"]:
            raise ConfigurationError("a Redis Cluster has only database 0")
    else:
        if not path:
            raise ConfigurationError(
                f"name the Sentinel service: redis+sentinel://host:port/<service> ({url!r})"
            )
        topology.service = unquote(path[0])
        if len(path) > 1:
            try:
                topology.db = int(path[1])
            except ValueError:
                raise ConfigurationError(f"bad database number in {url!r}") from None
    return topology
