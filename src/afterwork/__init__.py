"""afterwork: reliable, observable background work for FastAPI.

The names below load on first use (PEP 562), so ``import afterwork`` and the
``afterwork`` command stay fast; ``from afterwork import Afterwork`` loads what it needs.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from . import _moved
from .__about__ import __version__ as __version__

if _typing.TYPE_CHECKING:
    from ._engine.scheduler import ScheduleInfo as ScheduleInfo
    from ._engine.services import ServiceState as ServiceState
    from ._engine.services import ServiceStatus as ServiceStatus
    from ._engine.worker import Worker as Worker
    from ._engine.worker import WorkerStatistics as WorkerStatistics
    from ._lifecycle import RateLimit as RateLimit
    from ._middleware import JobCall as JobCall
    from ._settings import Settings as Settings
    from .app import Afterwork as Afterwork
    from .app import ServiceContext as ServiceContext
    from .context import JobContext as JobContext
    from .exceptions import AfterworkError as AfterworkError
    from .exceptions import BackendError as BackendError
    from .exceptions import BackendUnavailable as BackendUnavailable
    from .exceptions import ConfigurationError as ConfigurationError
    from .exceptions import EnqueueError as EnqueueError
    from .exceptions import JobNotFound as JobNotFound
    from .exceptions import PayloadTooLarge as PayloadTooLarge
    from .exceptions import TaskNotFound as TaskNotFound
    from .job import Job as Job
    from .job import JobError as JobError
    from .job import JobEvent as JobEvent
    from .job import JobStatus as JobStatus
    from .retry import Retry as Retry
    from .task import Task as Task

_moved.install()

__all__ = (
    "Afterwork",
    "AfterworkError",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "EnqueueError",
    "Job",
    "JobCall",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobStatus",
    "PayloadTooLarge",
    "RateLimit",
    "Retry",
    "ScheduleInfo",
    "ServiceContext",
    "ServiceState",
    "ServiceStatus",
    "Settings",
    "Task",
    "TaskNotFound",
    "Worker",
    "WorkerStatistics",
    "__version__",
)

#: Where each public name lives (loaded by ``__getattr__`` on first use).
_LAZY: dict[str, str] = {
    "Afterwork": ".app",
    "AfterworkError": ".exceptions",
    "BackendError": ".exceptions",
    "BackendUnavailable": ".exceptions",
    "ConfigurationError": ".exceptions",
    "EnqueueError": ".exceptions",
    "Job": ".job",
    "JobCall": "._middleware",
    "RateLimit": "._lifecycle",
    "JobContext": ".context",
    "JobError": ".job",
    "JobEvent": ".job",
    "JobNotFound": ".exceptions",
    "JobStatus": ".job",
    "PayloadTooLarge": ".exceptions",
    "Retry": ".retry",
    "ScheduleInfo": "._engine.scheduler",
    "ServiceContext": ".app",
    "ServiceState": "._engine.services",
    "ServiceStatus": "._engine.services",
    "Settings": "._settings",
    "Task": ".task",
    "TaskNotFound": ".exceptions",
    "Worker": "._engine.worker",
    "WorkerStatistics": "._engine.worker",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'afterwork' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
