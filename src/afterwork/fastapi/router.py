"""``aw.router(auth=...)``: the REST API, the event stream and the dashboard, locked by default.

Security model, in one place:

* **Authentication.** The caller's ``auth`` dependency is a dependency of the router itself,
  so it runs before every route it serves: JSON, the event stream, the dashboard page and
  its static files. Serving it open takes ``insecure_no_auth=True``, which logs a warning.
  Authentication comes before the body is parsed: a caller without credentials gets its
  401/403 even for a body that is not JSON, never a 422 that tells it the route exists.
* **Cross-site requests.** Every state-changing request must carry the custom header
  ``X-Afterwork-CSRF: 1`` (a plain HTML form cannot set one, and a cross-site ``fetch`` that
  sets one needs a CORS preflight the router never grants), and an ``Origin``, when sent,
  must be one of ``trusted_origins`` (default: the request's own scheme and host). Nothing
  here sets ``Access-Control-Allow-Origin``.
* **DNS rebinding.** Served without authentication, the router answers only requests whose
  ``Host`` is a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``) or the host of a
  trusted origin: a page on another name that resolves to this machine gets 403.
* **Injection.** Every response under the router (its 401s, 404s, 405s, 422s, 500s and
  redirects included) carries a strict ``Content-Security-Policy`` (scripts and styles from
  this origin only: no inline code, no ``eval``), ``X-Content-Type-Options: nosniff``,
  ``frame-ancestors 'none'``, ``Referrer-Policy: no-referrer`` and ``Cache-Control:
  no-store``. The dashboard inserts job data with ``textContent`` only.
* **Size.** Request bodies are capped while they are read (``413``), not after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Coroutine
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Message

from ..__about__ import __version__
from ..backends.base import EventHistory
from ..exceptions import ConfigurationError, EnqueueError, PayloadTooLarge, TaskNotFound
from ..job import Job, JobStatus
from . import _extras
from ._flow_routes import add_flow_routes
from ._history_routes import add_history_routes
from ._options import AuthDependency, RouterOptions
from ._schemas import EnqueueBody, InfoOut, JobOut, JobPage, QueueOut, TaskOut
from ._sse import event_stream

if TYPE_CHECKING:
    from ..app import Afterwork
    from ..metrics import Metrics

__all__ = ("CSRF_HEADER", "RouterOptions", "create_router")

logger: logging.Logger = logging.getLogger(__name__)

#: The header every state-changing request must carry (with the value ``1``).
CSRF_HEADER = "X-Afterwork-CSRF"

#: The largest page ``GET /jobs`` returns.
MAX_PAGE = 200

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: The dashboard's files: URL name → (package file, media type). Nothing else is served.
STATIC_FILES = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}


class _SecureRoute(APIRoute):
    """An ``APIRoute`` that caps the request body while it is read and adds security headers."""

    max_body: int = 0  # set on a subclass per router

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit = self.max_body

        takes_model = _takes_model_body(self)

        async def secure_handler(request: Request) -> Response:
            try:
                if request.method not in SAFE_METHODS:
                    request = _limit_body(request, limit)
                try:
                    response = await handler(request)
                except RequestValidationError as exc:
                    if takes_model and _is_undecodable(exc):
                        await _authenticate_first(handler, request)
                    return _validation_response(exc)
            except StarletteHTTPException as exc:
                # Refusals (401 from auth, 403, 404, 413) carry the same headers.
                exc.headers = {**SECURITY_HEADERS, **(exc.headers or {})}
                raise
            except Exception as exc:
                if _app_handles(request, exc):
                    raise
                logger.exception(
                    "afterwork API: %s %s failed",
                    request.method,
                    request.url.path,
                    extra={"action": "api_error"},
                )
                return JSONResponse(
                    {"detail": "Internal Server Error"}, status_code=500, headers=SECURITY_HEADERS
                )
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return secure_handler


def _takes_model_body(route: APIRoute) -> bool:
    field = route.body_field
    annotation = getattr(getattr(field, "field_info", None), "annotation", None)
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_undecodable(exc: RequestValidationError) -> bool:
    return any(error.get("type") == "json_invalid" for error in exc.errors())


async def _authenticate_first(
    handler: Callable[[Request], Coroutine[Any, Any, Response]], request: Request
) -> None:
    """Run the route's dependencies (auth first) for a body FastAPI could not decode.

    FastAPI decodes a JSON body before it runs any dependency, so a body that is not JSON
    answered 422 to anyone. The handler runs again on the body ``[]``, which decodes but
    can never validate as the route's model: its dependencies run, auth refusing with its
    own 401/403, and the endpoint never does.
    """
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"[]", "more_body": False}

    try:
        await handler(Request(request.scope, receive))
    except RequestValidationError:
        return


def _app_handles(request: Request, exc: Exception) -> bool:
    """Whether the app registered a handler for ``exc`` (then it answers, not the router)."""
    handlers, _ = request.scope.get("starlette.exception_handlers", ({}, {}))
    return any(cls in handlers for cls in type(exc).__mro__ if cls is not Exception)


def _safe_text(value: object) -> str:
    # A lone surrogate in a message cannot be encoded as UTF-8 JSON.
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _validation_response(exc: RequestValidationError) -> Response:
    """FastAPI's 422, without echoing the input back.

    FastAPI's own handler returns each error's ``input``: a ``NaN`` or a lone surrogate
    there cannot be encoded as JSON, so the 422 became a 500. Nothing a client sent is
    needed to tell it which field was wrong.
    """
    detail = [
        {
            "type": _safe_text(error.get("type", "")),
            "loc": [loc if isinstance(loc, int) else _safe_text(loc) for loc in error["loc"]],
            "msg": _safe_text(error.get("msg", "")),
        }
        for error in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422, headers=SECURITY_HEADERS)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body over the {limit}-byte limit")


def _limit_body(request: Request, limit: int) -> Request:
    """The request, reading its body through a counter that stops at ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _too_large(limit)
    receive = request.receive
    seen = 0

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # Stop here: the rest of the body is never read into memory.
                raise _too_large(limit)
        return message

    return Request(request.scope, limited_receive)


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _origin(value: str) -> str:
    return value.strip().rstrip("/").lower()


def _hostname(host: str) -> str:
    """``example.com`` of ``example.com:8000``, ``[::1]`` of ``[::1]:8000``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def request_guard(
    trusted_origins: Collection[str] | None, *, check_host: bool
) -> Callable[[Request], None]:
    """A dependency that refuses requests a cross-site page (or a rebound name) could send.

    Args:
        trusted_origins: origins allowed to send state-changing requests; ``None``: the
            request's own scheme and host.
        check_host: refuse a ``Host`` that is neither a loopback name nor the host of a
            trusted origin (the router is served without authentication).
    """
    trusted = frozenset(_origin(origin) for origin in trusted_origins or ())
    for origin in trusted:
        if "://" not in origin:
            raise ConfigurationError(
                f"trusted_origins holds scheme://host[:port] values, not {origin!r}"
            )
    trusted_hosts = LOOPBACK_HOSTS | {_hostname(o.partition("://")[2]) for o in trusted}

    def guard(request: Request) -> None:
        host = request.headers.get("host", "")
        if check_host and _hostname(host) not in trusted_hosts:
            raise HTTPException(403, "unknown host refused (see trusted_origins)")
        if request.method in SAFE_METHODS:
            return
        if request.headers.get(CSRF_HEADER) != "1":
            raise HTTPException(403, f"state-changing requests need the header {CSRF_HEADER}: 1")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "cross-site request refused")
        origin = request.headers.get("origin")
        if origin is not None:
            allowed = trusted or {_origin(f"{request.url.scheme}://{host}")}
            if _origin(origin) not in allowed:
                raise HTTPException(403, "cross-origin request refused")

    return guard


def _auth_dependency(auth: AuthDependency | None, insecure_no_auth: bool) -> list[DependsParam]:
    if auth is not None and insecure_no_auth:
        raise ConfigurationError("pass auth= or insecure_no_auth=True, not both")
    if insecure_no_auth:
        logger.warning(
            "the afterwork router is served WITHOUT authentication (insecure_no_auth=True): "
            "anyone who can reach it can read every job and cancel, retry or enqueue work",
            extra={"action": "router_insecure_no_auth"},
        )
        return []
    if auth is None:
        raise ConfigurationError(
            "aw.router() needs an auth dependency, e.g. aw.router(auth=Depends(require_admin)): "
            "it guards every route (API, event stream, dashboard). To serve it without "
            "authentication, say so: aw.router(insecure_no_auth=True)"
        )
    if isinstance(auth, DependsParam):
        return [auth]
    if callable(auth):
        return [Depends(auth)]
    raise TypeError(f"auth must be Depends(...) or a callable, not {type(auth).__name__}")


def create_router(
    aw: Afterwork,
    *,
    auth: AuthDependency | None = None,
    insecure_no_auth: bool = False,
    max_body: int | None = None,
    heartbeat: float = 15.0,
    stream_lifetime: float = 300.0,
    dashboard: bool = True,
    trusted_origins: Collection[str] | None = None,
    metrics: Metrics | None = None,
) -> APIRouter:
    """The REST API, the event stream and the dashboard of ``aw``, as an ``APIRouter``.

    Prefer :meth:`afterwork.Afterwork.router`, which calls this.

    Args:
        aw: the instance whose jobs and tasks are served.
        auth: a dependency that refuses unauthorised callers (raise ``HTTPException(401)``
            or ``403``); it guards every route. Required unless ``insecure_no_auth``.
        insecure_no_auth: serve everything without authentication (logs a warning).
        max_body: largest request body in bytes (default: ``max_payload`` + 64 KiB).
        heartbeat: seconds of silence before the event stream sends a keep-alive comment.
        stream_lifetime: seconds after which an event stream ends (the browser reconnects).
        dashboard: serve the dashboard at ``GET /``.
        trusted_origins: origins (``scheme://host[:port]``) allowed to send state-changing
            requests; default: the request's own scheme and host. Served without auth,
            only loopback hosts and the hosts of these origins are answered at all.
        metrics: serve these :class:`~afterwork.metrics.Metrics` at ``GET /metrics``, in
            Prometheus' text format, behind ``auth`` like every route.

    Raises:
        ConfigurationError: no ``auth`` and no ``insecure_no_auth``.
    """
    dependencies = _auth_dependency(auth, insecure_no_auth)
    if isinstance(trusted_origins, str):
        raise ConfigurationError("trusted_origins is a list of origins, not one string")
    dependencies.append(Depends(request_guard(trusted_origins, check_host=insecure_no_auth)))
    if heartbeat <= 0 or stream_lifetime <= 0:
        raise ConfigurationError("heartbeat and stream_lifetime must be positive")
    limit = max_body if max_body is not None else aw.config.max_payload + 64 * 1024
    route_class = type("SecureRoute", (_SecureRoute,), {"max_body": limit})
    router = APIRouter(dependencies=dependencies, route_class=route_class, tags=["afterwork"])

    _add_job_routes(router, aw)
    add_flow_routes(router, aw)
    _add_task_routes(router, aw)
    _add_event_routes(router, aw, heartbeat, stream_lifetime)
    _extras.add_schedule_routes(router, aw)
    _extras.add_service_routes(router, aw)
    _extras.add_worker_routes(router, aw)
    add_history_routes(router, aw)
    if metrics is not None:
        _extras.add_metrics_route(router, metrics)

    @router.get("/info", response_model=InfoOut, summary="What this API offers")
    async def info() -> InfoOut:
        return InfoOut(
            version=__version__,
            csrf_header=CSRF_HEADER,
            schedules=bool(aw.schedules),
            services=bool(aw.services),
            event_resume=isinstance(aw.backend, EventHistory),
        )

    if dashboard:
        _add_dashboard_routes(router)
    _add_fallback_route(router)
    return router


class _AnyPath(Convertor[str]):
    """Like ``:path``, but also across newlines (``%0A``), so no path escapes the fallback."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("afterwork_any", _AnyPath())


def _add_fallback_route(router: APIRouter) -> None:
    """Answer every other path under the router, so its 404s, 405s and redirects get the
    security headers too (the app's own would not). Added last; auth still runs first."""
    routes = list(router.routes)

    @router.api_route(
        "/{path:afterwork_any}",
        methods=[],  # no methods listed: every method, even QUERY or TRACE
        operation_id="afterwork_fallback",  # FastAPI's default id needs a method
        include_in_schema=False,
    )
    async def fallback(request: Request, path: str) -> Response:
        # ``routes`` hold the paths before the app's prefix: match what follows it.
        scope = {**request.scope, "path": "/" + path, "root_path": ""}
        allowed = sorted(
            {
                method
                for route in routes
                if isinstance(route, APIRoute) and route.matches(scope)[0] is Match.PARTIAL
                for method in route.methods or ()
            }
        )
        if allowed:
            raise HTTPException(405, "method not allowed", headers={"Allow": ", ".join(allowed)})
        if path.endswith("/"):
            stripped = {**scope, "path": "/" + path.rstrip("/")}
            if any(route.matches(stripped)[0] is not Match.NONE for route in routes):
                url = request.url.replace(path=request.url.path.rstrip("/"))
                return RedirectResponse(str(url), status_code=307)
        raise HTTPException(404, "Not Found")


def _job_or_404(job: Job | None, job_id: str) -> JobOut:
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    return JobOut.of(job)


JobId = Annotated[str, Path(min_length=1, max_length=128)]


def _add_job_routes(router: APIRouter, aw: Afterwork) -> None:
    @router.get("/jobs", response_model=JobPage, summary="List jobs, newest first")
    async def list_jobs(
        status: Annotated[list[JobStatus] | None, Query()] = None,
        queue: Annotated[str | None, Query(max_length=200)] = None,
        task: Annotated[str | None, Query(max_length=500)] = None,
        before: Annotated[str | None, Query(max_length=128, description="A cursor")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> JobPage:
        jobs = await aw.list_jobs(
            status=status or None, queue=queue, task=task, before=before, limit=limit
        )
        cursor = jobs[-1].id if len(jobs) == limit else None
        return JobPage(jobs=[JobOut.of(job) for job in jobs], next_cursor=cursor)

    @router.get("/jobs/{job_id}", response_model=JobOut, summary="One job, in full")
    async def get_job(job_id: JobId) -> JobOut:
        return _job_or_404(await aw.get_job(job_id), job_id)

    @router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a job")
    async def cancel_job(job_id: JobId) -> JobOut:
        job = await aw.get_job(job_id)
        if job is not None and job.is_finished:
            raise HTTPException(409, f"the job is already {job.status.value}")
        return _job_or_404(await aw.cancel(job_id), job_id)

    @router.post("/jobs/{job_id}/retry", response_model=JobOut, summary="Run a job again")
    async def retry_job(job_id: JobId) -> JobOut:
        job = await aw.get_job(job_id)
        if job is not None and job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise HTTPException(409, f"only failed or cancelled jobs are retried, not {job.status}")
        return _job_or_404(await aw.retry(job_id), job_id)

    @router.get("/queues", response_model=list[QueueOut], summary="Job counts per queue")
    async def queues() -> list[QueueOut]:
        stats = await aw.stats()
        paused = await aw.paused_queues()
        now = aw.backend.now()
        return [QueueOut.of(queue, now, paused=queue.queue in paused) for queue in stats]


def _enqueue_error(exc: EnqueueError, body: EnqueueBody) -> HTTPException:
    if exc.field is not None:
        loc: list[str] = ["body", "options", exc.field]
    elif exc.param is not None:
        where = "kwargs" if exc.param in body.kwargs else "args"
        loc = ["body", where, exc.param]
    elif "option" in exc.message:
        loc = ["body", "options"]
    else:
        loc = ["body"]
    status = 413 if isinstance(exc, PayloadTooLarge) else 422
    return HTTPException(status, [{"loc": loc, "msg": exc.message, "type": "enqueue_error"}])


def _add_task_routes(router: APIRouter, aw: Afterwork) -> None:
    @router.get("/tasks", response_model=list[TaskOut], summary="Registered tasks")
    async def tasks() -> list[TaskOut]:
        return [TaskOut.of(task) for _, task in sorted(aw.tasks.items())]

    @router.post(
        "/tasks/{name:path}/enqueue",
        response_model=JobOut,
        status_code=201,
        summary="Enqueue a job of a task",
        responses={
            200: {"description": "An unfinished job holds the key: that job, not a new one"},
            404: {"description": "No such task"},
            413: {"description": "Too large"},
        },
    )
    async def enqueue(
        name: Annotated[str, Path(max_length=500)], body: EnqueueBody, response: Response
    ) -> JobOut:
        try:
            task = aw.get_task(name)
        except TaskNotFound:
            raise HTTPException(404, f"no task is registered under the name {name!r}") from None
        options = body.options.model_dump(exclude_none=True)
        try:
            job = await task.options(**options).enqueue(*body.args, **body.kwargs)
        except EnqueueError as exc:
            raise _enqueue_error(exc, body) from None
        if job.created_now is False:
            response.status_code = 200
        return JobOut.of(job)


def _add_event_routes(
    router: APIRouter, aw: Afterwork, heartbeat: float, stream_lifetime: float
) -> None:
    @router.get(
        "/events",
        summary="Job events (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(
        request: Request,
        job: Annotated[str | None, Query(max_length=128, description="Only this job")] = None,
        since: Annotated[
            str | None, Query(max_length=64, description="Resume after this event id")
        ] = None,
    ) -> StreamingResponse:
        if job is not None and await aw.get_job(job) is None:
            raise HTTPException(404, f"no job with id {job!r}")
        # A reconnecting EventSource sends the last id it saw, which beats the URL's.
        last_event_id = request.headers.get("last-event-id") or since
        stream = event_stream(
            aw,
            job_id=job,
            last_event_id=last_event_id[:64] if last_event_id else None,
            heartbeat=heartbeat,
            lifetime=stream_lifetime,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def _read_static(name: str) -> bytes:
    return resources.files("afterwork.fastapi").joinpath("static", name).read_bytes()


def _add_dashboard_routes(router: APIRouter) -> None:
    cache: dict[str, bytes] = {}

    def load(name: str) -> bytes:
        if name not in cache:
            cache[name] = _read_static(name)
        return cache[name]

    @router.get("/", response_class=Response, summary="The dashboard", include_in_schema=False)
    async def page() -> Response:
        return Response(load("index.html"), media_type="text/html; charset=utf-8")

    @router.get("/static/{name}", response_class=Response, include_in_schema=False)
    async def static(name: Annotated[str, Path(max_length=64)]) -> Response:
        entry = STATIC_FILES.get(name)
        if entry is None:
            raise HTTPException(404, "no such file")
        return Response(load(entry[0]), media_type=entry[1])
