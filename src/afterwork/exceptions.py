"""afterwork's exceptions.

Every exception afterwork raises on purpose derives from :class:`AfterworkError`::

    AfterworkError
    ├── ConfigurationError            bad URL, bad option, unknown scheme
    │   └── MissingDependencyError    a backend's extra is not installed
    ├── EnqueueError (ValueError)     arguments or options rejected; nothing was stored
    │   └── PayloadTooLarge           the encoded arguments exceed the size limit
    ├── DependencyError (TypeError)   a ``Depends`` that cannot run in a job (needs a request)
    ├── TaskNotFound (LookupError)    no task registered under that name
    ├── JobNotFound (LookupError)     no job with that id
    ├── ScheduleNotFound (LookupError)  no schedule with that name
    ├── ServiceStartError             a service failed to start; ``__cause__`` holds why
    ├── InvalidTransition             a state change the job model forbids
    ├── BackendError                  the store failed; ``__cause__`` holds the driver's error
    │   ├── BackendUnavailable (ConnectionError)  the store cannot be reached
    │   │   └── EnqueueUnconfirmed    an enqueue the store did not confirm (``may_exist``)
    │   └── SchemaVersionError        the store was written by a newer afterwork
    └── JobFailed                     raised by ``Job.result_or_raise()`` for a failed or
                                      cancelled job; ``.job`` and ``.error`` say why

Control flow raised from job code (:class:`afterwork.Retry`) lives in ``afterwork.retry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job, JobError

__all__ = (
    "AfterworkError",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "DependencyError",
    "EnqueueError",
    "EnqueueUnconfirmed",
    "InvalidTransition",
    "JobFailed",
    "JobNotFound",
    "MissingDependencyError",
    "PayloadTooLarge",
    "ScheduleNotFound",
    "SchemaVersionError",
    "ServiceStartError",
    "TaskNotFound",
)


class AfterworkError(Exception):
    """Base class of every error afterwork raises."""

    def __init__(self, message: str | None = None, **attributes: Any) -> None:
        # The class docstring is the default message (as in procrastinate).
        if message is None:
            message = (self.__class__.__doc__ or self.__class__.__name__).strip().splitlines()[0]
        super().__init__(message)
        self.message = message
        for name, value in attributes.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.message!r})"


class ConfigurationError(AfterworkError):
    """afterwork is configured wrongly."""


class MissingDependencyError(ConfigurationError, ImportError):
    """A backend or a feature (metrics) needs an optional dependency that is not installed."""

    extra: str

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"this needs the {module!r} package: pip install 'afterwork[{extra}]'",
            extra=extra,
        )


class EnqueueError(AfterworkError, ValueError):
    """The job's arguments or options were rejected; nothing was stored."""

    param: str | None
    """The task parameter whose argument was rejected, if one was."""
    task: str | None
    field: str | None
    """The enqueue option that was rejected (``"delay"``, ``"key"``, ``"priority"``,
    ``"queue"``), if one was."""

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        task: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, param=param, task=task, field=field)


class PayloadTooLarge(EnqueueError):
    """The job's encoded arguments are larger than the configured limit."""


class DependencyError(AfterworkError, TypeError):
    """A dependency cannot be resolved in background work."""

    param: str | None

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message, param=param)

    def for_owner(self, owner: str) -> DependencyError:
        """The same error, its message prefixed with the task or service it belongs to."""
        return DependencyError(f"{owner}: {self.message}", param=self.param)


class TaskNotFound(AfterworkError, LookupError):
    """No task is registered under that name."""

    name: str

    def __init__(self, name: str) -> None:
        super().__init__(f"no task is registered under the name {name!r}", name=name)


class JobNotFound(AfterworkError, LookupError):
    """No job has that id."""

    job_id: str

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}", job_id=job_id)


class ScheduleNotFound(AfterworkError, LookupError):
    """No schedule has that name."""

    schedule: str


class ServiceStartError(AfterworkError):
    """A service failed to start, so the runtime (and the app's startup) failed.

    The service's own exception, if it raised one, is kept as ``__cause__``.
    """

    service: str


class InvalidTransition(AfterworkError):
    """The job model does not allow this state change."""


class BackendError(AfterworkError):
    """The store failed. The driver's own exception is kept as ``__cause__``."""


class BackendUnavailable(BackendError, ConnectionError):
    """The store cannot be reached."""

    may_have_applied: bool = True
    """Whether the operation may have taken effect anyway (a request sent, its reply lost).
    ``False`` when the store knows it did not (it could not connect; a rolled-back write)."""


class EnqueueUnconfirmed(BackendUnavailable):
    """The store did not confirm the enqueue: the job may or may not have been stored.

    ``enqueue`` already retried with the same job id; the ids are made before the write and
    the stores keep one job per id, so **calling the same enqueue again is safe**: it returns
    the job if it was stored, and stores it otherwise (a new call of ``task.enqueue`` makes a
    new id: retry with ``aw.enqueue_many(jobs)`` on :attr:`jobs` to keep them).
    """

    job_ids: tuple[str, ...]
    may_exist: bool
    """``False`` only when the store knows nothing was written."""
    jobs: tuple[Any, ...]
    """The jobs as built (``NewJob``): pass them to ``aw.enqueue_many`` to retry."""


class SchemaVersionError(BackendError):
    """The store's schema was written by a newer version of afterwork."""


class JobFailed(AfterworkError):
    """The job ended without a result (it failed, or was cancelled).

    Raised by :meth:`afterwork.Job.result_or_raise`.

    Attributes:
        job_id: the job's id.
        job: the finished job (``None`` if the raiser had none).
        error: the job's recorded error (type, message, traceback), if any.
    """

    job_id: str
    job: Job | None
    error: JobError | None

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        job: Job | None = None,
        error: JobError | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, job=job, error=error)
