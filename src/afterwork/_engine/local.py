"""The jobs this process runs: its workers and the inline runner of ``Jobs.add_task``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..job import Job
    from .host import Host, LocalMember
    from .inline import InlineRunner

__all__ = ("LocalRuns",)


class LocalRuns:
    """The jobs this process runs: its workers and the in-process runner of ``add_task``.

    ``Afterwork.cancel`` calls :meth:`cancel` so a job running here stops at once (other
    processes learn of the cancel from their next heartbeat); ``Afterwork.aclose`` calls
    :meth:`stop_workers`.
    """

    def __init__(self, host: Host) -> None:
        self._host = host
        self._workers: set[LocalMember] = set()
        self._inline: InlineRunner | None = None

    def attach(self, member: LocalMember) -> None:
        """Register a worker while it runs."""
        self._workers.add(member)

    def detach(self, member: LocalMember) -> None:
        self._workers.discard(member)

    @property
    def inline(self) -> InlineRunner:
        """The runner of plain callables given to ``Jobs.add_task`` (created on first use)."""
        if self._inline is None:
            from .inline import InlineRunner  # the runner (and pydantic-core) on first use

            self._inline = InlineRunner(self._host)
        return self._inline

    @property
    def has_workers(self) -> bool:
        """Whether a worker of this instance runs in this process now."""
        return bool(self._workers)

    def cancel(self, job_id: str) -> bool:
        """Cancel ``job_id`` wherever it runs in this process; ``True`` if it ran here."""
        found = False
        for worker in list(self._workers):
            found = worker.cancel_local(job_id) or found
        if self._inline is not None:
            found = self._inline.cancel_local(job_id) or found
        return found

    def stop_workers(self) -> None:
        """Stop every local worker at once (running jobs are released)."""
        for worker in list(self._workers):
            worker.stop(now=True)

    # -- the unwritten jobs of plain callables (``writebehind``) -------------------------

    def unwritten(self, job_id: str) -> Job | None:
        """A job run here whose row is not written yet, as this process knows it."""
        return None if self._inline is None else self._inline.behind.get(job_id)

    def cancel_unwritten(self, job_id: str) -> Job | None:
        """Cancel a job run here whose row is not written yet; ``None`` if there is none."""
        if self._inline is None:
            return None
        job = self._inline.behind.request_cancel(job_id)
        if job is not None:
            self._inline.cancel_local(job_id)
        return job

    async def settle(self, timeout: float | None) -> None:
        """Wait until every job run here has ended and its row is written."""
        if self._inline is not None:
            await self._inline.behind.settle(timeout)

    async def flush(self) -> None:
        """Write the rows of the jobs run here that are not written yet."""
        if self._inline is not None:
            await self._inline.behind.flush()
