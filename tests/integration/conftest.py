"""Integration helpers: the router behind auth, an SSE reader, a Redis limited by ACL."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request

from afterwork import Afterwork

from ..redis_server import RedisServer
from ..servers import serve as serve

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSRF = {"X-Afterwork-CSRF": "1"}
SESSION_COOKIE = "afterwork_session"


def require_admin(request: Request) -> None:
    """The tests' auth: a bearer token (API clients) or a session cookie (the browser)."""
    header = request.headers.get("authorization", "")
    cookie = request.cookies.get(SESSION_COOKIE, "")
    supplied = header.removeprefix("Bearer ") if header.startswith("Bearer ") else cookie
    if not secrets.compare_digest(supplied.encode(), TOKEN.encode()):
        raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})


def make_app(aw: Afterwork, **router_options: Any) -> FastAPI:
    app = FastAPI(lifespan=aw.lifespan(queues=["default"]))
    app.include_router(
        aw.router(auth=Depends(require_admin), **router_options), prefix="/afterwork"
    )
    return app


@dataclass
class Message:
    event: str = "message"
    data: Any = None
    id: str | None = None
    comment: str | None = None


@dataclass
class EventReader:
    """Reads Server-Sent Events from a streaming httpx response."""

    response: httpx.Response
    lines: AsyncIterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lines = self.response.aiter_lines()

    async def next(self) -> Message | None:
        """The next message or comment, or ``None`` when the stream ends."""
        message = Message()
        seen = False
        async for line in self.lines:
            if line == "":
                if seen:
                    return message
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                message.comment = value
            elif name == "data":
                message.data = json.loads(value)
            elif name == "event":
                message.event = value
            elif name == "id":
                message.id = value
        return message if seen else None

    async def until(self, event: str, **match: Any) -> Message:
        """Skip messages until one of ``event`` whose data has ``match``'s items."""
        while True:
            message = await self.next()
            assert message is not None, f"stream ended before a {event!r} event"
            if message.event != event or message.comment is not None:
                continue
            if all(message.data.get(k) == v for k, v in match.items()):
                return message


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
