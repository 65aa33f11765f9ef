"""OpenTelemetry spans around enqueues and attempts, built on the middleware seam
(extra ``afterwork[otel]``).

:class:`Tracing` adds itself to an :class:`~afterwork.Afterwork` as a middleware:

- every enqueue runs in a ``PRODUCER`` span ``enqueue <task>``, a child of the span current
  where ``enqueue`` was called (a FastAPI request traced by its instrumentation, say);
- every attempt runs in a ``CONSUMER`` span ``run <task>`` with the attributes
  ``afterwork.task``, ``afterwork.queue``, ``afterwork.job.id``, ``afterwork.attempt``,
  ``afterwork.worker`` and ``afterwork.outcome``; a failed attempt records its exception
  (type, message, traceback) and sets the span's status to ``ERROR``. The span is current
  while the job runs, so the job's own spans are its children.

**What is not done yet**: the enqueuing span's context is kept in this process only (the
last 10,000 jobs enqueued here), not in the store. An attempt is the enqueue span's child
when it runs in the process that enqueued it (the app's own worker from ``aw.lifespan``,
``Jobs.add_task``, tests); run by a worker in another process, its span is a new trace.

Example:
    ```python
    from afterwork.tracing import Tracing

    Tracing(aw)  # uses the global TracerProvider; pass tracer_provider= for another
    ```

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .__about__ import __version__
from .exceptions import MissingDependencyError
from .job import Job, JobStatus

if TYPE_CHECKING:
    from ._middleware import JobCall, Middleware

__all__ = ("CONTEXTS_KEPT", "Tracing")

#: How many enqueued jobs' trace contexts a process keeps for their attempts.
CONTEXTS_KEPT = 10_000

_OUTCOMES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.SCHEDULED: "retried",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.QUEUED: "released",
}

_FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _otel() -> Any:
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        raise MissingDependencyError("otel", "opentelemetry-api") from None
    return trace, propagate


class Tracing:
    """OpenTelemetry spans for the enqueues and attempts of one :class:`~afterwork.Afterwork`.

    Args:
        aw: the instance to trace (anything with ``middleware()``).
        tracer_provider: where spans go (default: the global one).

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed.
    """

    def __init__(self, aw: Any, *, tracer_provider: Any = None) -> None:
        trace, propagate = _otel()
        self._trace = trace
        self._propagate = propagate
        self.tracer: Any = trace.get_tracer(
            "afterwork", __version__, tracer_provider=tracer_provider
        )
        self._contexts: OrderedDict[str, dict[str, str]] = OrderedDict()
        middleware: Callable[[Middleware], Middleware] = aw.middleware
        middleware(self)

    async def __call__(
        self, call: JobCall, call_next: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """The middleware: an enqueue or an attempt, in a span."""
        attributes: dict[str, Any] = {
            "afterwork.task": call.task,
            "afterwork.queue": call.queue,
            "afterwork.job.id": call.job_id,
        }
        kind = self._trace.SpanKind
        if call.kind == "enqueue":
            with self.tracer.start_as_current_span(
                f"enqueue {call.task}", kind=kind.PRODUCER, attributes=attributes
            ) as span:
                carrier: dict[str, str] = {}
                self._propagate.inject(carrier)
                stored = await call_next()
                if stored is not None and stored.id != call.job_id:
                    span.set_attribute("afterwork.duplicate_of", stored.id)
                elif stored is not None:
                    self._keep(call.job_id, carrier)
                return stored
        carrier = self._contexts.get(call.job_id) or {}
        parent = self._propagate.extract(carrier) if carrier else None
        attributes["afterwork.attempt"] = call.attempt
        if call.worker is not None:
            attributes["afterwork.worker"] = call.worker
        with self.tracer.start_as_current_span(
            f"run {call.task}",
            context=parent,
            kind=kind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=True,
        ) as span:
            done = await call_next()
            if done is None:
                span.set_attribute("afterwork.outcome", "lost")
                return done
            span.set_attribute("afterwork.outcome", _OUTCOMES.get(done.status) or done.status.value)
            if done.status in (JobStatus.FAILED, JobStatus.SCHEDULED) and done.error:
                error = done.error
                span.add_event(
                    "exception",
                    {
                        "exception.type": error.type,
                        "exception.message": error.message,
                        "exception.stacktrace": error.traceback or "",
                    },
                )
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error.message))
            if done.status in _FINAL:
                self._contexts.pop(call.job_id, None)
            return done

    def _keep(self, job_id: str, carrier: dict[str, str]) -> None:
        self._contexts[job_id] = carrier
        while len(self._contexts) > CONTEXTS_KEPT:
            self._contexts.popitem(last=False)
