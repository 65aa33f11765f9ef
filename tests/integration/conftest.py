from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..redis_server import RedisServer

#: The least-privileged user afterwork must work with (RELIABILITY.md, T-ACLTLS).
ACL_USER = "aw on >pw ~afterwork:* &afterwork:* +@all -@dangerous"


@pytest.fixture
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server whose only enabled user is limited to the afterwork prefix."""
    server = RedisServer(
        tmp_path_factory.mktemp("redis-acl"),
        extra=["--user", *ACL_USER.split(), "--user", "default", "off"],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def acl_url(server: RedisServer, prefix: str = "afterwork") -> str:
    return f"redis://aw:pw@127.0.0.1:{server.port}/0?prefix={prefix}"
