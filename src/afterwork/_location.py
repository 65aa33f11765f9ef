"""Where a store is, said so that a person can tell two stores apart.

The default store, ``sqlite:///./afterwork.db``, is relative to the current directory: a
worker started from another folder quietly opens a new, empty one. Every process that
opens a store logs this location, and ``afterwork jobs``/``queues`` print it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ("redact_url", "store_location")


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    # Everything after the last "@" as written: one host[:port], or several
    # (redis+cluster://, redis+sentinel://), which ``parts.port`` cannot parse.
    hosts = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def store_location(backend: object, url: str) -> str:
    """An absolute path for a SQLite file, the URL without password otherwise."""
    path = getattr(backend, "path", None)
    if isinstance(path, str) and type(backend).__name__ == "SQLiteBackend":
        return f"sqlite:///{path}"  # made absolute when the backend was built
    if type(backend).__name__ == "MemoryBackend":
        return "memory:// (this process only)"
    backend_url = getattr(backend, "url", None)
    return redact_url(backend_url if isinstance(backend_url, str) else url)
