"""Loading ``MODULE:ATTRIBUTE`` for the CLI, with one clear line for every way it can fail."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Afterwork

__all__ = ("load_target",)


def _where(exc: BaseException) -> str:
    """`` (at path:line)`` of the innermost frame outside the import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and not frame.filename.endswith("_cli_target.py")
    ]
    if not frames:
        return ""
    return f" (at {frames[-1].filename}:{frames[-1].lineno})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _as_module(path: str) -> str:
    """``app.jobs`` for ``app/jobs.py`` or ``./app/jobs.py``."""
    stem = path.removesuffix(".py").replace(os.sep, "/").removeprefix("./").strip("/")
    return stem.replace("/", ".")


def load_target(target: str, error: type[Exception]) -> Afterwork:
    """Import ``module:attribute`` and return the :class:`Afterwork` it names.

    Every failure raises ``error`` with one line: a file path instead of a module, a module
    that is missing or fails while it is imported, a missing attribute, another type.
    """
    from .app import Afterwork

    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise error(f"expected MODULE:ATTRIBUTE (for example app.jobs:aw), not {target!r}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        raise error(
            f"{module_name!r} is a file path; give the module's import path instead: "
            f"{_as_module(module_name)}:{attribute}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise error(
                f"cannot import module {module_name!r}: no module named {exc.name!r} "
                f"(looked in the current directory {os.getcwd()} and sys.path)"
            ) from None
        raise error(f"importing {module_name!r} failed: {_one_line(exc)}{_where(exc)}") from None
    except Exception as exc:
        raise error(f"importing {module_name!r} failed: {_one_line(exc)}{_where(exc)}") from None
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, Afterwork):
        raise error(f"{target} is a {type(obj).__name__}, not an Afterwork instance")
    return obj
