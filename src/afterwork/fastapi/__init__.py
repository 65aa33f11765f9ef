"""FastAPI integration: the ``Jobs`` dependency; ``aw.router()`` builds the API and dashboard."""

from __future__ import annotations

from ._jobs import Jobs as Jobs
from ._jobs import JobsManager as JobsManager
from ._jobs import PendingJob as PendingJob
from ._jobs import get_afterwork as get_afterwork

__all__ = ("Jobs", "JobsManager", "PendingJob", "get_afterwork")
