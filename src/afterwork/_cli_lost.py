"""A worker started from the wrong folder says so.

The default store, ``sqlite:///./afterwork.db``, is relative to the current directory. A
worker started elsewhere opens (creates) another file and waits forever on an empty
queue, while the jobs sit in the ``afterwork.db`` beside the app. Before it starts, the
worker checks for exactly that: an empty or missing store of its own, and a store file
next to the module that defines the app.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Afterwork

__all__ = ("lost_store_warning", "warn_if_lost")

logger: logging.Logger = logging.getLogger("afterwork.cli")


def _holds_work(path: str) -> bool:
    """Whether the SQLite store at ``path`` holds any job or schedule tick (read-only)."""
    if not os.path.exists(path):
        return False
    import sqlite3  # a worker on another store never gets here

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return True  # cannot tell: say nothing
    try:
        for table in ("afterwork_jobs", "afterwork_ticks"):
            try:
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                    return True
            except sqlite3.OperationalError:
                continue  # no such table yet: a new store
        return False
    except sqlite3.Error:
        return True
    finally:
        conn.close()


def lost_store_warning(aw: Afterwork, target: str) -> str | None:
    """The warning for a worker that probably opened the wrong store, or ``None``."""
    store = getattr(aw.backend, "path", None)
    if type(aw.backend).__name__ != "SQLiteBackend" or not isinstance(store, str):
        return None
    module = sys.modules.get(target.partition(":")[0])
    module_file = getattr(module, "__file__", None)
    if not isinstance(module_file, str):
        return None
    beside = os.path.join(os.path.dirname(os.path.abspath(module_file)), "afterwork.db")
    if os.path.abspath(beside) == store or not os.path.exists(beside) or _holds_work(store):
        return None
    return (
        f"this worker's store {store} holds no jobs, but {beside} exists next to "
        f"{module_file}: was the worker started from another folder? The default store "
        "sqlite:///./afterwork.db is relative to the current directory; give an absolute "
        "path (sqlite:////abs/path/afterwork.db) or set AFTERWORK_URL"
    )


def warn_if_lost(aw: Afterwork, target: str) -> None:
    message = lost_store_warning(aw, target)
    if message is not None:
        logger.warning(message, extra={"action": "worker_store_elsewhere"})
