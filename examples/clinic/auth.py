"""Staff login: hashed passwords, bearer tokens stored hashed with an expiry.

* A login takes the same time whether or not the user exists (a dummy scrypt runs).
* Repeated wrong passwords for one user from one address are throttled (429).
* Sessions last an hour and end early on logout.
* The browser gets its token as ``HttpOnly``, ``SameSite=Strict`` cookies, ``Secure`` over
  HTTPS: one for the afterwork dashboard, one for the waiting-room screen.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, Response, WebSocket, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .db import DbSession, utcnow
from .models import Role, Staff, StaffSession

logger = logging.getLogger(__name__)

SESSION_LIFETIME = timedelta(hours=1)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """A salted scrypt hash, as ``salt$hash`` in base64."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` value."""
    salt, _, digest = stored.partition("$")
    candidate = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), **_SCRYPT)
    return hmac.compare_digest(candidate, base64.b64decode(digest))


#: Checked against when the user does not exist, so that case costs a scrypt too.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass
class Throttle:
    """At most ``limit`` wrong passwords per (username, address) in ``window`` seconds.

    Kept in this process's memory: with several web processes, keep it in the database or
    Redis instead. Keyed by address too, so a stranger cannot lock a colleague out from
    elsewhere; a correct password clears the count.
    """

    limit: int = 5
    window: float = 15 * 60.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def retry_after(self, key: tuple[str, str]) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        now = self.clock()
        recent = [t for t in self._failures.get(key, []) if t > now - self.window]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent[0] + self.window - now if len(recent) >= self.limit else 0.0

    def failed(self, key: tuple[str, str]) -> None:
        self._failures.setdefault(key, []).append(self.clock())

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)


throttle = Throttle()


class TooManyAttempts(Exception):
    """Raised by :func:`login` while a (username, address) pair is throttled."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many wrong passwords; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


def token_hash(token: str) -> str:
    """What the sessions table keeps of a token: a leaked table logs nobody in."""
    return hashlib.sha256(token.encode()).hexdigest()


async def login(
    db: AsyncSession, username: str, password: str, address: str = ""
) -> tuple[str, datetime] | None:
    """Open a session for valid credentials: the new token and its expiry, else ``None``.

    Raises:
        TooManyAttempts: too many wrong passwords for ``username`` from ``address``.
    """
    key = (username, address)
    wait = throttle.retry_after(key)
    if wait > 0:
        raise TooManyAttempts(wait)
    staff = await db.scalar(select(Staff).where(Staff.username == username))
    # scrypt takes tens of milliseconds: off the event loop, and run for an unknown user
    # too, against a dummy hash, so the time taken does not tell whether the user exists.
    stored = staff.password_hash if staff is not None else _DUMMY_HASH
    matches = await anyio.to_thread.run_sync(verify_password, password, stored)
    if staff is None or not matches:
        throttle.failed(key)
        return None
    throttle.succeeded(key)
    token = secrets.token_urlsafe(32)
    expires_at = utcnow() + SESSION_LIFETIME
    db.add(StaffSession(staff_id=staff.id, token_hash=token_hash(token), expires_at=expires_at))
    await db.commit()
    logger.info("staff %s logged in", username)
    return token, expires_at


async def logout(db: AsyncSession, token: str | None) -> bool:
    """End the session of ``token`` at once; whether there was one."""
    if not token:
        return False
    result = await db.execute(
        delete(StaffSession).where(StaffSession.token_hash == token_hash(token))
    )
    await db.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def purge_expired(db: AsyncSession) -> int:
    """Delete the sessions past their expiry; return how many."""
    result = await db.execute(delete(StaffSession).where(StaffSession.expires_at <= utcnow()))
    await db.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

#: The dashboard is a page in the browser: it authenticates with a cookie, scoped to it.
DASHBOARD_COOKIE = "clinic_admin"
DASHBOARD_PATH = "/afterwork"
#: The waiting-room screen (its page and its WebSocket) authenticates with this one. The
#: clinic's JSON API reads bearer tokens only, so this cookie opens nothing else.
SCREEN_COOKIE = "clinic_screen"


async def _session_staff(db: AsyncSession, token: str | None) -> Staff | None:
    if not token:
        return None
    session = await db.scalar(
        select(StaffSession).where(
            StaffSession.token_hash == token_hash(token), StaffSession.expires_at > utcnow()
        )
    )
    return None if session is None else session.staff


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "log in first: POST /api/v1/auth/login",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_staff(db: DbSession, bearer: Bearer) -> Staff:
    """The logged-in staff member (a valid, unexpired bearer token), else 401."""
    staff = await _session_staff(db, bearer.credentials if bearer else None)
    if staff is None:
        raise _unauthorized()
    return staff


CurrentStaff = Annotated[Staff, Depends(require_staff)]


async def require_admin(request: Request, db: DbSession, bearer: Bearer) -> Staff:
    """An admin, by bearer token or by the dashboard's cookie (401, or 403 for non-admins).

    It guards the afterwork dashboard, whose state-changing calls also need afterwork's
    CSRF header, so a cookie is safe there; the clinic's own API takes bearer tokens only.
    """
    token = bearer.credentials if bearer else request.cookies.get(DASHBOARD_COOKIE)
    staff = await _session_staff(db, token)
    if staff is None:
        raise _unauthorized()
    if staff.role is not Role.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admins only")
    return staff


def set_dashboard_cookie(
    response: Response, token: str, expires_at: datetime, *, secure: bool = False
) -> None:
    """Let the browser that logged in open the dashboard and the waiting-room screen.

    ``secure``: the request came over HTTPS (then the cookies never travel over HTTP).
    """
    for name, path in ((DASHBOARD_COOKIE, DASHBOARD_PATH), (SCREEN_COOKIE, "/")):
        response.set_cookie(
            name,
            token,
            expires=expires_at.replace(tzinfo=UTC),
            path=path,
            httponly=True,
            samesite="strict",
            secure=secure,
        )


def clear_cookies(response: Response) -> None:
    response.delete_cookie(DASHBOARD_COOKIE, path=DASHBOARD_PATH, httponly=True, samesite="strict")
    response.delete_cookie(SCREEN_COOKIE, path="/", httponly=True, samesite="strict")


def same_origin(websocket: WebSocket) -> bool:
    """Whether the socket was opened by a page of this site (or by no browser at all).

    Browsers always send ``Origin`` on a WebSocket handshake, and a page on another site
    could otherwise open this socket with the user's cookies (cross-site WebSocket
    hijacking). Clients that are not browsers send none.
    """
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    return origin.lower() == f"{scheme}://{websocket.headers.get('host', '').lower()}"


async def screen_staff(db: AsyncSession, websocket: WebSocket) -> Staff | None:
    """The staff member behind a screen's socket: a bearer header or the screen cookie."""
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else None
    return await _session_staff(db, token or websocket.cookies.get(SCREEN_COOKIE))


async def page_staff(db: AsyncSession, request: Request) -> Staff | None:
    """The staff member behind a browser page (the screen cookie)."""
    return await _session_staff(db, request.cookies.get(SCREEN_COOKIE))
