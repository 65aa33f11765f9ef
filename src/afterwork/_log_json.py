"""``afterwork worker --log-format json``: one JSON object per log line.

Each line carries the standard fields (``time``, ``level``, ``logger``, ``message``) and
every structured field the record was given in ``extra`` (``action``, ``job`` with its id,
task, queue and attempt, ``worker``, ...), so log pipelines read what the dashboard reads.
A traceback, if any, is one string field.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ("JsonFormatter",)

#: Attributes every LogRecord has: anything else came from ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


#: What ``json.dumps(data, default=repr, ensure_ascii=False)`` builds on every call, built
#: once (a worker logs a line per job).
_ENCODER = json.JSONEncoder(default=repr, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never raises on odd ``extra`` values)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = vars(record)
        # The ``extra`` names, in the order the record got them (a set difference first:
        # most records carry only the standard attributes and two or three more).
        added = fields.keys() - _STANDARD
        if added:
            data.update(
                {
                    name: value
                    for name, value in fields.items()
                    if name in added and not name.startswith("_")
                }
            )
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return _ENCODER.encode(data)
