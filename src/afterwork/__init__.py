"""afterwork: reliable, observable background work for FastAPI."""

from __future__ import annotations

from .__about__ import __version__ as __version__
from ._settings import Settings as Settings
from .app import Afterwork as Afterwork
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
from .services import ServiceContext as ServiceContext
from .task import Task as Task

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
    "ServiceContext",
    "Settings",
    "Task",
    "TaskNotFound",
    "__version__",
)
