"""Module paths that moved into the private engine, still importable with a warning.

``afterwork.worker``, ``afterwork.runner``, ``afterwork.scheduler``, ``afterwork.services``,
``afterwork.dependencies`` and ``afterwork._watchdog`` became ``afterwork._engine.*``. There is
no file at the old paths (so version control sees the moves as renames); this finder builds
each old module on import, with a :class:`DeprecationWarning` naming the new place.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

__all__ = ("MOVED", "install")

#: old module → (its new private module, where users should import from now)
MOVED: dict[str, tuple[str, str]] = {
    "afterwork.worker": (
        "afterwork._engine.worker",
        "import Worker and WorkerStatistics from afterwork",
    ),
    "afterwork.runner": ("afterwork._engine.runner", "it is internal to afterwork"),
    "afterwork.scheduler": (
        "afterwork._engine.scheduler",
        "import ScheduleInfo from afterwork; schedules are declared with aw.cron and aw.every",
    ),
    "afterwork.services": (
        "afterwork._engine.services",
        "import ServiceContext, ServiceState and ServiceStatus from afterwork",
    ),
    "afterwork.dependencies": (
        "afterwork._engine.dependencies",
        "import resolve, dependencies_of and Dependency from afterwork.fastapi",
    ),
    "afterwork._watchdog": ("afterwork._engine.watchdog", "it is internal to afterwork"),
}

#: Names an old module had that now live elsewhere than its new module.
_EXTRA: dict[str, tuple[str, str]] = {
    "afterwork.services": ("afterwork.app", "ServiceContext"),
}


class _MovedFinder:
    """A meta path finder and loader (``importlib.abc`` is not imported: it is slow)."""

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, cast("Loader", self))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        new_name, advice = MOVED[module.__name__]
        # stacklevel=2 names the importing line: the import system's frames are skipped.
        warnings.warn(
            f"{module.__name__} is deprecated and will be removed; {advice}",
            DeprecationWarning,
            stacklevel=2,
        )
        target = importlib.import_module(new_name)
        names = {k: v for k, v in vars(target).items() if not k.startswith("__")}
        module.__dict__.update(names)
        exported = list(getattr(target, "__all__", ()))
        extra = _EXTRA.get(module.__name__)
        if extra is not None:
            source, name = extra
            setattr(module, name, getattr(importlib.import_module(source), name))
            exported.append(name)
        module.__all__ = tuple(sorted(exported))  # type: ignore[attr-defined]


_FINDER = _MovedFinder()


def install() -> None:
    """Let the old module paths import (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
