"""OpenTelemetry spans around enqueues and attempts, built on the middleware seam
(extra ``afterwork[otel]``).

:class:`Tracing` adds itself to an :class:`~afterwork.Afterwork` as a middleware:

- every enqueue runs in a ``PRODUCER`` span ``enqueue <task>``, a child of the span current
  where ``enqueue`` was called (a FastAPI request traced by its instrumentation, say). Its
  context is injected with the global propagator (W3C ``traceparent`` and ``tracestate``,
  plus ``baggage`` when configured) into the job's :attr:`~afterwork.job.Job.headers`, so
  it is stored with the job on every store;
- every attempt, in whichever process runs it, extracts that context and runs in a
  ``CONSUMER`` span ``run <task>``, a child of the enqueue span, with the attributes
  ``afterwork.task``, ``afterwork.queue``, ``afterwork.job.id``, ``afterwork.attempt``,
  ``afterwork.worker`` and ``afterwork.outcome``; a failed attempt records its exception
  (type, message, traceback) and sets the span's status to ``ERROR``. The span is current
  while the job runs, so the job's own spans are its children;
- a cron tick's attempt (a job whose headers name its schedule, ``afterwork-schedule``)
  starts a trace of its own, *linked* to the tick's enqueue span rather than its child:
  ticks are not caused by one request, and one trace per tick stays readable.

A job with no stored context (enqueued before tracing was added, or a plain callable of
``Jobs.add_task``) runs in a child of whatever span is current where it runs.

Example:
    ```python
    from afterwork.tracing import Tracing

    Tracing(aw)  # uses the global TracerProvider; pass tracer_provider= for another
    ```

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .__about__ import __version__
from .exceptions import MissingDependencyError
from .job import MAX_HEADERS, MAX_HEADERS_BYTES, SCHEDULE_HEADER, Job, JobStatus

if TYPE_CHECKING:
    from ._middleware import JobCall, Middleware

__all__ = ("Tracing",)

logger: logging.Logger = logging.getLogger(__name__)

#: What is kept of a carrier too large for the job's headers (a large ``baggage``).
_ESSENTIAL = ("traceparent", "tracestate")

_OUTCOMES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.SCHEDULED: "retried",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.QUEUED: "released",
}


def _otel() -> Any:
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        raise MissingDependencyError("otel", "opentelemetry-api") from None
    return trace, propagate, context


def _size(headers: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())


class Tracing:
    """OpenTelemetry spans for the enqueues and attempts of one :class:`~afterwork.Afterwork`.

    Args:
        aw: the instance to trace (anything with ``middleware()``).
        tracer_provider: where spans go (default: the global one).

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed.
    """

    def __init__(self, aw: Any, *, tracer_provider: Any = None) -> None:
        trace, propagate, context = _otel()
        self._trace = trace
        self._propagate = propagate
        self._context = context
        self.tracer: Any = trace.get_tracer(
            "afterwork", __version__, tracer_provider=tracer_provider
        )
        self._warned = False
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
        headers = call.headers
        schedule = headers.get(SCHEDULE_HEADER)
        if schedule is not None:
            attributes["afterwork.schedule"] = schedule
        kind = self._trace.SpanKind
        if call.kind == "enqueue":
            with self.tracer.start_as_current_span(
                f"enqueue {call.task}", kind=kind.PRODUCER, attributes=attributes
            ) as span:
                self._inject(headers, call.task)
                stored = await call_next()
                if stored is not None and stored.id != call.job_id:
                    span.set_attribute("afterwork.duplicate_of", stored.id)
                return stored
        attributes["afterwork.attempt"] = call.attempt
        if call.worker is not None:
            attributes["afterwork.worker"] = call.worker
        parent, links = self._origin(headers, linked=schedule is not None)
        with self.tracer.start_as_current_span(
            f"run {call.task}",
            context=parent,
            kind=kind.CONSUMER,
            attributes=attributes,
            links=links,
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
            return done

    def _inject(self, headers: dict[str, str], task: str) -> None:
        """Put the current (enqueue span's) context into the job's headers, if it fits."""
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        room = MAX_HEADERS_BYTES - _size(headers)
        if _size(carrier) > room or len(headers) + len(carrier) > MAX_HEADERS:
            carrier = {k: v for k, v in carrier.items() if k in _ESSENTIAL}
            if not self._warned:
                self._warned = True
                logger.warning(
                    "the trace context of a %s job does not fit in its headers"
                    " (%d bytes left): only %s kept",
                    task,
                    room,
                    " and ".join(_ESSENTIAL),
                    extra={"action": "trace_context_trimmed"},
                )
            if _size(carrier) > room or len(headers) + len(carrier) > MAX_HEADERS:
                return  # no room at all: the attempts start traces of their own
        headers.update(carrier)

    def _origin(self, headers: dict[str, str], *, linked: bool) -> tuple[Any, list[Any]]:
        """The parent context of an attempt's span and its links, from the job's headers."""
        if not headers:
            return None, []  # nothing stored: a child of the current span, if any
        extracted = self._propagate.extract(headers)
        origin = self._trace.get_current_span(extracted).get_span_context()
        if not origin.is_valid:
            return None, []  # headers, but no trace context in them
        if not linked:
            return extracted, []
        # A tick's attempt: a root span of its own, linked to the tick's enqueue.
        return self._context.Context(), [self._trace.Link(origin)]
