"""FastAPI ``Depends`` resolved per job run: values, cleanup, caching, overrides, rejections.

Dependencies live at module level: task annotations are resolved from the module's
globals, as they are for real tasks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import (
    BackgroundTasks,
    Depends,
    FastAPI,
    Header,
    Query,
    Request,
    Security,
    WebSocket,
)
from fastapi.security import SecurityScopes
from pydantic import BaseModel

from afterwork import Afterwork, EnqueueError, JobContext, JobStatus, Task
from afterwork._engine.dependencies import overrides_of
from afterwork.exceptions import DependencyError
from afterwork.fastapi import Dependency, dependencies_of, resolve
from afterwork.testing import FakeClock

pytestmark = pytest.mark.anyio

EVENTS: list[str] = []
SEEN: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()
    SEEN.clear()


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://", clock=FakeClock(), seed=1)
    async with instance:
        yield instance


async def finished(aw: Afterwork, job_id: str) -> Any:
    job = await aw.get_job(job_id)
    assert job is not None
    return job


# -- dependencies used by the tests --------------------------------------------------------


class Resource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


def get_settings() -> dict[str, str]:
    EVENTS.append("settings")
    SEEN["settings_thread"] = threading.get_ident()
    return {"env": "test"}


async def get_client() -> str:
    EVENTS.append("client")
    return "client"


def get_db() -> Iterator[Resource]:
    resource = Resource("db")
    EVENTS.append("enter db")
    SEEN["db_enter_thread"] = threading.get_ident()
    try:
        yield resource
    except BaseException as exc:
        EVENTS.append(f"db saw {type(exc).__name__}")
        raise
    finally:
        resource.closed = True
        SEEN["db_exit_thread"] = threading.get_ident()
        EVENTS.append("exit db")


async def get_repo(db: Annotated[Resource, Depends(get_db)]) -> AsyncIterator[Resource]:
    repo = Resource(f"repo on {db.name}")
    EVENTS.append("enter repo")
    try:
        yield repo
    except BaseException as exc:
        EVENTS.append(f"repo saw {type(exc).__name__}")
        raise
    finally:
        EVENTS.append("exit repo")


def counted() -> int:
    EVENTS.append("counted")
    return EVENTS.count("counted")


def uses_counted(n: Annotated[int, Depends(counted)]) -> int:
    return n


def uses_counted_uncached(n: Annotated[int, Depends(counted, use_cache=False)]) -> int:
    return n


def job_tag(ctx: JobContext) -> str:
    return f"job {ctx.id}"


class Settings:
    """A class dependency: ``Annotated[Settings, Depends()]``."""

    def __init__(self, env: Annotated[dict[str, str], Depends(get_settings)]) -> None:
        self.env = env["env"]


class Multiplier:
    """A callable object dependency."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, n: Annotated[int, Depends(counted)]) -> int:
        return n * self.factor


def fake_db() -> Iterator[Resource]:
    EVENTS.append("enter fake db")
    yield Resource("fake")
    EVENTS.append("exit fake db")


def failing_commit() -> Iterator[Resource]:
    yield Resource("db")
    raise RuntimeError("commit failed")


# -- values -----------------------------------------------------------------------------------


async def test_dependencies_are_resolved_and_excluded_from_arguments(aw: Afterwork) -> None:
    @aw.task
    async def report(
        user: int,
        settings: Annotated[dict[str, str], Depends(get_settings)],
        client: str = Depends(get_client),
        *,
        tag: Annotated[str, Depends(job_tag)],
    ) -> str:
        return f"{user} {settings['env']} {client} {tag}"

    assert list(report.codec.parameters) == ["user"]
    assert report.codec.json_schema()["properties"].keys() == {"user"}
    with pytest.raises(EnqueueError):
        await report.enqueue(1, {"env": "prod"})
    with pytest.raises(EnqueueError):
        await report.enqueue(1, client="mine")
    job = await report.enqueue(7)
    assert job.args == [7] and job.kwargs == {}
    assert await aw.drain() == 1
    done = await finished(aw, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == f"7 test client job {job.id}"


async def test_sync_dependencies_run_off_the_event_loop(aw: Afterwork) -> None:
    loop_thread = threading.get_ident()

    @aw.task
    async def job(
        settings: Annotated[dict[str, str], Depends(get_settings)],
        db: Annotated[Resource, Depends(get_db)],
    ) -> None:
        assert not db.closed

    await job.enqueue()
    await aw.drain()
    assert EVENTS == ["settings", "enter db", "exit db"]
    for key in ("settings_thread", "db_enter_thread", "db_exit_thread"):
        assert SEEN[key] != loop_thread, key


async def test_class_and_callable_object_dependencies(aw: Afterwork) -> None:
    @aw.task
    def job(
        settings: Annotated[Settings, Depends()],
        tripled: Annotated[int, Depends(Multiplier(3))],
    ) -> str:
        return f"{settings.env} {tripled}"

    j = await job.enqueue()
    await aw.drain()
    assert (await finished(aw, j.id)).result == "test 3"


# -- cleanup --------------------------------------------------------------------------------


async def test_generators_are_closed_in_reverse_order_after_the_job(aw: Afterwork) -> None:
    @aw.task
    async def job(repo: Annotated[Resource, Depends(get_repo)]) -> str:
        EVENTS.append(f"job uses {repo.name}")
        return repo.name

    j = await job.enqueue()
    await aw.drain()
    assert (await finished(aw, j.id)).status is JobStatus.SUCCEEDED
    assert EVENTS == ["enter db", "enter repo", "job uses repo on db", "exit repo", "exit db"]


async def test_failure_is_thrown_into_generators_then_they_are_closed(aw: Afterwork) -> None:
    @aw.task
    async def job(repo: Annotated[Resource, Depends(get_repo)]) -> None:
        raise ValueError("boom")

    j = await job.enqueue()
    await aw.drain()
    done = await finished(aw, j.id)
    assert done.status is JobStatus.FAILED
    assert done.error.type.endswith("ValueError")
    assert EVENTS == [
        "enter db",
        "enter repo",
        "repo saw ValueError",
        "exit repo",
        "db saw ValueError",
        "exit db",
    ]


async def test_timeout_closes_generators(aw: Afterwork) -> None:
    @aw.task(timeout=0.05)
    async def job(repo: Annotated[Resource, Depends(get_repo)]) -> None:
        await anyio.sleep_forever()

    j = await job.enqueue()
    await aw.drain()
    done = await finished(aw, j.id)
    assert done.status is JobStatus.FAILED
    assert done.error.type == "TimeoutError"
    assert EVENTS[-4:] == ["repo saw TimeoutError", "exit repo", "db saw TimeoutError", "exit db"]


async def test_sync_job_timeout_waits_for_its_thread_before_cleanup(aw: Afterwork) -> None:
    @aw.task(timeout=0.05)
    def job(db: Annotated[Resource, Depends(get_db)], ctx: JobContext) -> None:
        # The runner gives up on the thread at the timeout; the thread still uses db.
        assert ctx._cancelled.wait(10)
        SEEN["closed while running"] = db.closed
        EVENTS.append("thread done")

    j = await job.enqueue()
    await aw.drain()
    assert (await finished(aw, j.id)).error.type == "TimeoutError"
    assert SEEN["closed while running"] is False
    assert EVENTS == ["enter db", "thread done", "db saw TimeoutError", "exit db"]


def register_endless_job(aw: Afterwork, started: anyio.Event) -> Task[..., Any]:
    """A task that holds its dependencies until it is stopped from outside."""

    @aw.task
    async def endless(repo: Annotated[Resource, Depends(get_repo)]) -> None:
        started.set()
        await anyio.sleep_forever()

    return endless


async def test_cancel_closes_generators(aw: Afterwork) -> None:
    started = anyio.Event()
    job = register_endless_job(aw, started)

    async with aw.worker():
        j = await job.enqueue()
        with anyio.fail_after(10):
            await started.wait()
        await aw.cancel(j.id)
        done = await j.wait(timeout=10)
    assert done.status is JobStatus.CANCELLED
    assert EVENTS == [
        "enter db",
        "enter repo",
        "repo saw CancelledError",
        "exit repo",
        "db saw CancelledError",
        "exit db",
    ]


async def test_generators_are_closed_when_the_worker_is_torn_down(aw: Afterwork) -> None:
    started = anyio.Event()
    job = register_endless_job(aw, started)

    with pytest.raises(ExceptionGroup) as crashed:
        async with aw.worker():
            await job.enqueue()
            with anyio.fail_after(10):
                await started.wait()
            raise RuntimeError("the app crashed")  # cancels the worker's task group
    assert crashed.group_contains(RuntimeError, match="the app crashed")
    # Cancelled from outside, yet the sync generator's cleanup (in a thread) still ran.
    assert EVENTS[-4:] == [
        "repo saw CancelledError",
        "exit repo",
        "db saw CancelledError",
        "exit db",
    ]


async def test_failed_teardown_fails_a_job_that_returned(aw: Afterwork) -> None:
    @aw.task
    async def job(db: Annotated[Resource, Depends(failing_commit)]) -> str:
        return "done"

    j = await job.enqueue()
    await aw.drain()
    done = await finished(aw, j.id)
    assert done.status is JobStatus.FAILED
    assert done.error.message == "commit failed"


async def test_failing_dependency_fails_the_attempt_and_closes_earlier_ones(
    aw: Afterwork,
) -> None:
    @aw.task
    async def job(
        db: Annotated[Resource, Depends(get_db)],
        bad: Annotated[Resource, Depends(failing_setup)],
    ) -> None:
        EVENTS.append("job ran")

    j = await job.enqueue()
    await aw.drain()
    done = await finished(aw, j.id)
    assert done.status is JobStatus.FAILED
    assert done.error.message == "no connection"
    assert EVENTS == ["enter db", "db saw ConnectionError", "exit db"]


async def failing_setup() -> Resource:
    raise ConnectionError("no connection")


# -- caching ----------------------------------------------------------------------------------


async def test_use_cache_within_a_run_not_across_runs(aw: Afterwork) -> None:
    @aw.task
    async def cached(
        a: Annotated[int, Depends(counted)],
        b: Annotated[int, Depends(uses_counted)],
    ) -> list[int]:
        return [a, b]

    @aw.task
    async def uncached(
        a: Annotated[int, Depends(counted)],
        b: Annotated[int, Depends(uses_counted_uncached)],
    ) -> list[int]:
        return [a, b]

    first = await cached.enqueue()
    await aw.drain()
    assert (await finished(aw, first.id)).result == [1, 1]
    EVENTS.clear()
    second = await cached.enqueue()
    await aw.drain()
    assert (await finished(aw, second.id)).result == [1, 1], "a new run calls it again"
    EVENTS.clear()
    third = await uncached.enqueue()
    await aw.drain()
    assert (await finished(aw, third.id)).result == [1, 2]


# -- overrides through a FastAPI app ---------------------------------------------------------


async def test_app_dependency_overrides_apply_to_jobs() -> None:
    aw = Afterwork("memory://", seed=1)

    @aw.task
    async def audit(action: str, db: Annotated[Resource, Depends(get_db)]) -> str:
        return f"{action} on {db.name}"

    app = FastAPI(lifespan=aw.lifespan)

    @app.post("/audit")
    async def post_audit(action: str) -> dict[str, str]:
        job = await audit.enqueue(action)
        return {"job": job.id}

    app.dependency_overrides[get_db] = fake_db
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/audit", params={"action": "login"})
        assert response.status_code == 200
        job = await aw.get_job(response.json()["job"])
        assert job is not None
        done = await job.wait(timeout=10)
        assert done.result == "login on fake"
        assert overrides_of(aw) is app.dependency_overrides
    assert EVENTS == ["enter fake db", "exit fake db"]
    # Outside the lifespan the app's overrides no longer apply.
    assert overrides_of(aw) == {}
    async with aw:
        again = await audit.enqueue("logout")
        await aw.drain()
        assert (await finished(aw, again.id)).result == "logout on db"


# -- rejected dependencies ------------------------------------------------------------------


def needs_request(request: Request) -> str:
    return str(request.url)


def needs_websocket(ws: WebSocket) -> None: ...


def needs_header(token: Annotated[str, Header()]) -> str:
    return token


def needs_query(page: int = 1) -> int:
    return page


def needs_query_marker(page: Annotated[int, Query()] = 1) -> int:
    return page


class Body(BaseModel):
    name: str


def needs_body(body: Body) -> str:
    return body.name


def needs_scopes(scopes: SecurityScopes) -> list[str]:
    return scopes.scopes


def needs_background(tasks: BackgroundTasks) -> None: ...


def current_user() -> str:
    return "ada"


def nested_request(url: Annotated[str, Depends(needs_request)]) -> str:
    return url


@pytest.mark.parametrize(
    ("dependency", "culprit", "why"),
    [
        (needs_request, "needs_request(request)", "Request"),
        (needs_websocket, "needs_websocket(ws)", "WebSocket"),
        (needs_header, "needs_header(token)", "header parameter"),
        (needs_query, "needs_query(page)", "query string"),
        (needs_query_marker, "needs_query_marker(page)", "query parameter"),
        (needs_body, "needs_body(body)", "query string or body"),
        (needs_scopes, "needs_scopes(scopes)", "SecurityScopes"),
        (needs_background, "needs_background(tasks)", "BackgroundTasks"),
        (
            nested_request,
            "nested_request(url) → tests.unit.test_dependencies.needs_request(request)",
            "Request",
        ),
    ],
)
def test_request_bound_dependencies_are_rejected_at_declaration(
    dependency: Any, culprit: str, why: str
) -> None:
    aw = Afterwork("memory://")

    async def job(value: Any = Depends(dependency)) -> None: ...

    with pytest.raises(DependencyError) as caught:
        aw.task(name="reports:job")(job)
    message = str(caught.value)
    assert message.startswith("reports:job: parameter 'value → ")
    assert f"test_dependencies.{culprit}'" in message
    assert why in message
    assert "no request in a job" in message
    assert caught.value.param == "value"
    assert "reports:job" not in aw.tasks


def test_security_and_request_parameters_of_the_task_itself_are_rejected() -> None:
    aw = Afterwork("memory://")

    async def secured(user: str = Security(current_user, scopes=["admin"])) -> None: ...

    async def with_request(request: Request) -> None: ...

    with pytest.raises(DependencyError, match=r"secured: parameter 'user' .*Security"):
        aw.task(name="secured")(secured)
    with pytest.raises(DependencyError, match=r"with_request: parameter 'request' .*Request"):
        aw.task(name="with_request")(with_request)


# -- the resolver on plain callables (what services use) --------------------------------------


async def service(
    settings: Annotated[dict[str, str], Depends(get_settings)],
    repo: Annotated[Resource, Depends(get_repo)],
    ctx: JobContext | None = None,
) -> None: ...


async def test_resolve_on_a_plain_callable_with_overrides() -> None:
    plans = dependencies_of(service, owner="service:status")
    assert set(plans) == {"settings", "repo"}
    assert all(isinstance(p, Dependency) for p in plans.values())
    async with contextlib.AsyncExitStack() as stack:
        values = await resolve(service, stack, overrides={get_db: fake_db})
        assert values["settings"] == {"env": "test"}
        assert values["repo"].name == "repo on fake"
        assert EVENTS == ["settings", "enter fake db", "enter repo"]
    assert EVENTS[-2:] == ["exit repo", "exit fake db"]


async def test_resolve_reports_a_missing_provided_value() -> None:
    async def svc(tag: Annotated[str, Depends(job_tag)]) -> None: ...

    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(DependencyError, match="JobContext, which is not available"):
            await resolve(dependencies_of(svc), stack)


def test_dependencies_of_names_the_owner() -> None:
    async def svc(url: Annotated[str, Depends(nested_request)]) -> None: ...

    with pytest.raises(DependencyError, match=r"^service:watch: parameter 'url → .*\(request\)"):
        dependencies_of(svc, owner="service:watch")
