"""The clinic's database: SQLAlchemy 2 async sessions, for routes and jobs alike."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

logger = logging.getLogger(__name__)

#: Relative to the working directory: ``make demo`` runs in ``.demo/``.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./clinic.db"


def database_url() -> str:
    """``CLINIC_DATABASE_URL``, else a ``clinic.db`` file in the working directory."""
    return os.environ.get("CLINIC_DATABASE_URL", DEFAULT_DATABASE_URL)


def store_url(url: str | None = None) -> str:
    """afterwork's store: the clinic's own database (``url``, default :func:`database_url`).

    One database for the clinic's tables and its jobs, so a route's changes and the jobs
    they call for commit together, or not at all (``task.options(connection=db)``).
    ``sqlite+aiosqlite:///./clinic.db`` gives ``sqlite:///./clinic.db``; a PostgreSQL URL
    (``postgresql+asyncpg://…``) gives ``postgresql://…``.
    """
    parsed = make_url(url or database_url())
    return parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=False)


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo: SQLite keeps no time zone, so we store UTC throughout."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """The base class of every table."""


class Database:
    """One engine and its session factory, opened by the app's lifespan (or a script)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    async def open(self, url: str | None = None) -> None:
        """Connect to ``url`` (default: :func:`database_url`) and create missing tables."""
        url = url or database_url()
        self._engine = create_async_engine(url)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        async with self._engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        logger.info("clinic database open: %s", url)

    async def aclose(self) -> None:
        """Dispose of the engine's connections."""
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._sessions = None

    @property
    def is_open(self) -> bool:
        return self._sessions is not None

    def session(self) -> AsyncSession:
        """A new session (use it as ``async with database.session() as db``)."""
        if self._sessions is None:
            raise RuntimeError("the clinic database is not open: run the app's lifespan first")
        return self._sessions()


database = Database()


async def get_db() -> AsyncIterator[AsyncSession]:
    """A session per request, or per job: the same dependency serves routes and tasks.

    In an ``afterwork worker`` process, which runs no app lifespan, the first job opens
    the database.
    """
    if not database.is_open:
        async with _opening():
            if not database.is_open:
                await database.open()
    async with database.session() as session:
        yield session


_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


def _opening() -> asyncio.Lock:
    """One opening at a time, on this event loop."""
    return _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


DbSession = Annotated[AsyncSession, Depends(get_db)]
