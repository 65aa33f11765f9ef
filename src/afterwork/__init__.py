"""afterwork: reliable, observable background work for FastAPI."""

from __future__ import annotations

from . import _moved
from .__about__ import __version__ as __version__
from ._engine.scheduler import ScheduleInfo as ScheduleInfo
from ._engine.services import ServiceState as ServiceState
from ._engine.services import ServiceStatus as ServiceStatus
from ._engine.worker import Worker as Worker
from ._engine.worker import WorkerStatistics as WorkerStatistics
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
    "JobContext",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobStatus",
    "PayloadTooLarge",
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
