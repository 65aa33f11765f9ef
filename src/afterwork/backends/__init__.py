"""Storage backends, chosen by URL scheme and imported lazily."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError, MissingDependencyError
from .base import Backend, Clock, Inspector, Store

__all__ = ("Backend", "Inspector", "Store", "from_url")

#: scheme → (module, class, extra, driver module)
SCHEMES: dict[str, tuple[str, str, str | None, str | None]] = {
    "memory": ("afterwork.backends.memory", "MemoryBackend", None, None),
    # SQLite is the default store: it runs on the standard library's sqlite3, no extra.
    "sqlite": ("afterwork.backends.sqlite", "SQLiteBackend", None, None),
    "redis": ("afterwork.backends.redis", "RedisBackend", "redis", "redis"),
    "rediss": ("afterwork.backends.redis", "RedisBackend", "redis", "redis"),
    "redis+cluster": ("afterwork.backends.redis", "RedisBackend", "redis", "redis"),
    "rediss+cluster": ("afterwork.backends.redis", "RedisBackend", "redis", "redis"),
    "redis+sentinel": ("afterwork.backends.redis", "RedisBackend", "redis", "redis"),
    "rediss+sentinel": ("afterwork.backends.redis", "RedisBackend", "redis", "redis"),
    "postgresql": ("afterwork.backends.postgres", "PostgresBackend", "postgres", "asyncpg"),
    "postgres": ("afterwork.backends.postgres", "PostgresBackend", "postgres", "asyncpg"),
}


def from_url(url: str, *, clock: Clock | None = None, **options: Any) -> Store:
    """The backend for ``url``: ``memory://``, ``sqlite:///path``, ``redis://…``, ``postgresql://…``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigurationError(f"unknown backend URL scheme in {url!r}; use one of {known}")
    module_name, class_name, extra, driver = SCHEMES[scheme]
    if driver is not None:
        try:
            importlib.import_module(driver)
        except ImportError:
            raise MissingDependencyError(extra or scheme, driver) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigurationError(
                f"the {scheme}:// backend is not available in this version of afterwork"
            ) from None
        raise
    factory = getattr(module, class_name)
    backend: Store = factory.from_url(url, clock=clock, **options)
    return backend
