from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..redis_server import RedisServer

#: The least-privileged user afterwork must work with (RELIABILITY.md, T-ACLTLS).
ACL_USER = "aw on >pw ~afterwork:* &afterwork:* +@all -@dangerous"
ADMIN_USER = "default on >admin-only resetkeys ~* &* +@all"


@pytest.fixture
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server where afterwork connects as a user limited to its prefix.

    The default user keeps full rights behind a password rather than ``off``: Redis 7.0
    replays the AOF's MULTI/EXEC blocks (how script effects are logged) as the default
    user, so with it disabled a restart drops every job (seen with 7.0.15).
    """
    server = RedisServer(
        tmp_path_factory.mktemp("redis-acl"),
        extra=["--user", *ACL_USER.split(), "--user", *ADMIN_USER.split()],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def acl_url(server: RedisServer, prefix: str = "afterwork") -> str:
    return f"redis://aw:pw@127.0.0.1:{server.port}/0?prefix={prefix}"
