"""The CLI's log formatters write what ``logging.Formatter`` and the JSON format always did."""

from __future__ import annotations

import json
import logging
import sys

from afterwork._cli_worker import PlainFormatter
from afterwork._log_json import JsonFormatter

PLAIN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def record(created: float, **more: object) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {
            "name": "afterwork.runner",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "job %s (%s) %s",
            "args": ("01J", "noop", "succeeded"),
            **more,
        }
    )
    made.created = created
    made.msecs = int((created - int(created)) * 1000) + 0.0
    return made


def test_the_plain_formatter_writes_what_logging_formatter_writes() -> None:
    cached, standard = PlainFormatter(PLAIN), logging.Formatter(PLAIN)
    # Within one second, across seconds, back in time (the cached second is not reused).
    for created in (1e9, 1e9 + 0.0004, 1e9 + 0.9995, 1e9 + 1.25, 1e9 + 61.5, 1e9 + 0.5):
        assert cached.format(record(created)) == standard.format(record(created))
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    failed = cached.format(record(1e9 + 2, exc_info=info))
    assert failed == standard.format(record(1e9 + 2, exc_info=info))
    assert failed.endswith("ValueError: boom")
    with_stack = record(1e9 + 3, stack_info="Stack (most recent call last):\n  here")
    assert cached.format(with_stack) == standard.format(with_stack)
    dated = PlainFormatter(PLAIN, datefmt="%H:%M")
    assert dated.format(record(1e9)) == logging.Formatter(PLAIN, datefmt="%H:%M").format(
        record(1e9)
    )


def test_the_json_formatter_carries_the_extra_fields_in_order() -> None:
    line = JsonFormatter().format(
        record(
            1e9 + 0.25,
            action="job_succeeded",
            job={"id": "01J", "task": "noop", "queue": "default", "attempt": 1},
            worker={"id": "w"},
            _private=1,
            odd=object(),
        )
    )
    data = json.loads(line)
    assert list(data)[:7] == ["time", "level", "logger", "message", "action", "job", "worker"]
    assert data["time"] == "2001-09-09T01:46:40.250000+00:00"
    assert data["message"] == "job 01J (noop) succeeded"
    assert data["job"]["attempt"] == 1
    assert "_private" not in data
    assert data["odd"].startswith("<object object")
    plain = json.loads(JsonFormatter().format(record(1e9)))
    assert set(plain) == {"time", "level", "logger", "message"}
