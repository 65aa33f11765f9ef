"""Job data made safe for a terminal.

Anything a job carries (task and queue names, arguments, results, error messages, stored
tracebacks) may hold escape sequences: ``ESC [ 2 J``, an OSC 8 link, an 8-bit CSI
(``U+009B``), a bidi override that reorders what the operator reads. The CLI prints every
such value through these functions, which show each non-printable character as an escape
(``\\u001b``) instead of sending it to the terminal.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ("safe_block", "safe_json", "safe_line")


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_line(value: Any) -> str:
    """One line of text: every non-printable character (newlines too) shown escaped."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def safe_block(value: Any) -> str:
    """Several lines (a traceback): newlines kept, everything else non-printable escaped."""
    text = "" if value is None else str(value)
    return "\n".join(safe_line(line) for line in text.split("\n"))


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters past U+FFFF
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def safe_json(data: Any) -> str:
    """Indented JSON whose strings show non-printable characters as ``\\uXXXX`` escapes.

    Outside strings, JSON text holds only printable characters and the newlines of the
    indentation, so escaping every other non-printable character keeps it valid JSON that
    decodes to the same data.
    """
    text = json.dumps(data, ensure_ascii=False, indent=2)
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)
