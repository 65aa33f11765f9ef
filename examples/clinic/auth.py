"""Staff login: hashed passwords, bearer tokens stored hashed with an expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .db import DbSession, utcnow
from .models import Role, Staff, StaffSession

logger = logging.getLogger(__name__)

SESSION_LIFETIME = timedelta(hours=12)
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


def token_hash(token: str) -> str:
    """What the sessions table keeps of a token: a leaked table logs nobody in."""
    return hashlib.sha256(token.encode()).hexdigest()


async def login(db: AsyncSession, username: str, password: str) -> tuple[str, datetime] | None:
    """Open a session for valid credentials: the new token and its expiry, else ``None``."""
    staff = await db.scalar(select(Staff).where(Staff.username == username))
    # scrypt takes tens of milliseconds: off the event loop.
    if staff is None or not await anyio.to_thread.run_sync(
        verify_password, password, staff.password_hash
    ):
        return None
    token = secrets.token_urlsafe(32)
    expires_at = utcnow() + SESSION_LIFETIME
    db.add(StaffSession(staff_id=staff.id, token_hash=token_hash(token), expires_at=expires_at))
    await db.commit()
    logger.info("staff %s logged in", username)
    return token, expires_at


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


def set_dashboard_cookie(response: Response, token: str, expires_at: datetime) -> None:
    """Let the browser that logged in open the dashboard (the cookie goes nowhere else)."""
    response.set_cookie(
        DASHBOARD_COOKIE,
        token,
        expires=expires_at.replace(tzinfo=UTC),
        path=DASHBOARD_PATH,
        httponly=True,
        samesite="strict",
    )
