"""FastAPI integration: the ``Jobs`` dependency; ``aw.router()`` builds the API and dashboard.

Also FastAPI ``Depends`` resolution outside a request, for library code: :func:`resolve`
and :func:`dependencies_of` (what jobs and services use; see ``docs/dependencies.md``).
"""

from __future__ import annotations

from .._engine.dependencies import Dependency as Dependency
from .._engine.dependencies import dependencies_of as dependencies_of
from .._engine.dependencies import resolve as resolve
from ._jobs import Jobs as Jobs
from ._jobs import JobsManager as JobsManager
from ._jobs import PendingJob as PendingJob
from ._jobs import get_afterwork as get_afterwork
from ._progress import job_event_stream as job_event_stream
from ._progress import send_job_events as send_job_events

__all__ = (
    "Dependency",
    "Jobs",
    "JobsManager",
    "PendingJob",
    "dependencies_of",
    "get_afterwork",
    "job_event_stream",
    "resolve",
    "send_job_events",
)
