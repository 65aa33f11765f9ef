"""Task names a worker can find, and what to say when it cannot.

A task's default name is ``module:qualname``. Defined in a script run as ``python jobs.py``,
its module is ``__main__``, a name no worker can import: ``afterwork worker jobs:aw``
imports the file as ``jobs`` and registers the task as ``jobs:send``. So a task defined in
``__main__`` is named after the module a worker would import (``jobs``, or ``app.jobs`` for
a file inside a package), and only where that cannot be known (``python -c``, a REPL, a
notebook) keeps ``__main__:``, which :meth:`Afterwork.build_job` refuses for a shared store.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = (
    "MAIN_PREFIX",
    "default_task_name",
    "main_module_name",
    "main_task_problem",
    "unknown_task_message",
)

MAIN_PREFIX = "__main__:"


def main_module_name() -> str | None:
    """The name a worker would import the running script by, or ``None`` if unknowable."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name)  # python -m app.jobs
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None  # python -c, a REPL, a notebook
    folder, file = os.path.split(os.path.abspath(path))
    parts = [file.removesuffix(".py")]
    # Inside a package, a worker run from the project's root imports it as app.jobs.
    while os.path.exists(os.path.join(folder, "__init__.py")):
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    name = ".".join(parts)
    return name if all(part.isidentifier() for part in parts) else None


def default_task_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "__main__"
    if module == "__main__":
        module = main_module_name() or "__main__"
    return f"{module}:{func.__qualname__}"


def main_task_problem(name: str) -> str:
    """Why a job of the task ``name`` (``__main__:…``) cannot run in a worker, and the fix."""
    function = name.removeprefix(MAIN_PREFIX)
    return (
        f"task {name!r} was defined in __main__ (python -c, a REPL or a notebook), so no "
        f"worker can import it: give it a name, @aw.task(name={function!r}), and register "
        "it in the worker too, or move it into a module the worker imports"
    )


def unknown_task_message(name: str, registered: Iterable[str]) -> str:
    """The error of a job whose task the worker does not have."""
    if name.startswith(MAIN_PREFIX):
        return main_task_problem(name)
    return (
        f"no task named {name!r} is registered in this worker "
        f"(registered: {', '.join(sorted(registered)) or 'none'})"
    )
