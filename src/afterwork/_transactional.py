"""Enqueue inside the application's own database transaction (``connection=``).

``await task.options(connection=session).enqueue(...)`` and
``await aw.enqueue_many(jobs, connection=session)`` take the same path as a plain enqueue
(validation, middleware, ``created_now``); only the last step differs: the store writes
the jobs through the app's connection, with :meth:`TransactionalEnqueue.enqueue_in
<afterwork.backends.base.TransactionalEnqueue.enqueue_in>`, instead of in a transaction of
its own. Which connections a store accepts is the store's business (``docs/transactions.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .backends.base import Backend, NewJob, TransactionalEnqueue
from .exceptions import EnqueueError
from .job import Job

__all__ = ("enqueue_through",)


async def enqueue_through(store: Backend, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
    """Create ``jobs`` in ``connection``'s transaction, or say why this store cannot."""
    if not isinstance(store, TransactionalEnqueue):
        raise EnqueueError(
            f"the {type(store).__name__} store ({store!r}) cannot enqueue inside an "
            "application transaction (connection=); the SQLite store can, through a "
            "SQLAlchemy session on its own file, and the PostgreSQL store, through an asyncpg or "
            "psycopg connection or a SQLAlchemy session on its database (docs/transactions.md)",
            field="connection",
        )
    return await store.enqueue_in(connection, jobs)
