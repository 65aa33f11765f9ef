"""The types of ``aw.router()``'s options, apart from the router so the facade can name them
without importing it (``afterwork.app`` names these under ``TYPE_CHECKING`` only)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypedDict

from fastapi.params import Depends as DependsParam

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ("AuthDependency", "RouterOptions")

AuthDependency = DependsParam | Callable[..., Any]


class RouterOptions(TypedDict, total=False):
    """Tuning of :func:`create_router` (all optional)."""

    max_body: int
    """Largest request body in bytes; default: the store's ``max_payload`` plus 64 KiB."""
    heartbeat: float
    """Seconds of silence before the event stream sends a keep-alive comment (default 15)."""
    stream_lifetime: float
    """Seconds after which an event stream ends and the browser reconnects (default 300)."""
    dashboard: bool
    """Serve the dashboard at ``GET /`` (default ``True``)."""
    trusted_origins: Collection[str]
    """Origins (``https://admin.example.com``) allowed to send state-changing requests;
    default: the request's own scheme and host."""
    metrics: Metrics
    """Serve these metrics at ``GET /metrics`` (behind ``auth``)."""
