"""How the stores write a history row's sparse buckets (``{"index": count}`` as JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ("dump_buckets", "load_buckets")


def dump_buckets(buckets: Mapping[int, int]) -> str:
    return json.dumps({str(i): n for i, n in sorted(buckets.items()) if n}, separators=(",", ":"))


def load_buckets(text: str | bytes | None) -> dict[int, int]:
    """The buckets back; an unreadable value reads as none (history is advisory)."""
    if not text:
        return {}
    try:
        data = json.loads(text)
        return {int(i): int(n) for i, n in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
