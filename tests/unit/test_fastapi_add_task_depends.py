"""``Depends`` of plain functions given to ``jobs.add_task`` (issue 16)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.security import OAuth2PasswordBearer
from fastapi.testclient import TestClient

from afterwork import Afterwork, JobStatus
from afterwork.exceptions import DependencyError
from afterwork.fastapi import Jobs


class Session:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.rows: list[str] = []


EVENTS: list[str] = []


def get_events() -> list[str]:
    return EVENTS


async def get_db(events: Annotated[list[str], Depends(get_events)]) -> AsyncIterator[Session]:
    session = Session(events)
    events.append("open")
    try:
        yield session
        events.append(f"commit {session.rows}")
    except Exception as exc:
        events.append(f"rollback ({exc})")
        raise
    finally:
        events.append("close")


def sync_db() -> Iterator[str]:
    EVENTS.append("sync open")
    yield "sync-session"
    EVENTS.append("sync close")


oauth = OAuth2PasswordBearer(tokenUrl="token")


def needs_request(request: Request) -> str:
    return request.url.path


def by_request(path: Annotated[str, Depends(needs_request)]) -> None: ...


def by_token(token: Annotated[str, Depends(oauth)]) -> None: ...


def make() -> tuple[Afterwork, FastAPI]:
    aw = Afterwork("memory://")
    return aw, FastAPI(lifespan=aw.lifespan)


def test_a_plain_function_gets_its_depends_in_a_job_scope_torn_down_after_it() -> None:
    EVENTS.clear()
    aw, app = make()
    ids: list[str] = []

    async def audit(action: str, db: Annotated[Session, Depends(get_db)]) -> None:
        db.rows.append(action)
        EVENTS.append("audit ran")
        if action == "explode":
            raise ValueError("boom")

    # The default form keeps type checkers happy (add_task's arguments are typed).
    def sync_audit(action: str, session: str = Depends(sync_db)) -> None:
        EVENTS.append(f"{action} with {session}")

    @app.post("/{action}")
    async def route(action: str, jobs: Jobs) -> None:
        ids.append(jobs.add_task(audit, action).id)  # type: ignore[call-overload]
        ids.append(jobs.add_task(sync_audit, action).id)

    client = TestClient(app)
    client.post("/export")
    assert EVENTS == [
        "open",
        "audit ran",
        "commit ['export']",
        "close",
        "sync open",
        "export with sync-session",
        "sync close",
    ]
    EVENTS.clear()
    client.post("/explode")
    assert EVENTS[:4] == ["open", "audit ran", "rollback (boom)", "close"]
    failed = aw.run_sync(lambda: aw.get_job(ids[2]))
    assert failed is not None and failed.status is JobStatus.FAILED


def test_overrides_and_explicit_arguments() -> None:
    EVENTS.clear()
    aw, app = make()
    other: list[str] = []
    app.dependency_overrides[get_events] = lambda: other

    async def audit(action: str, db: Annotated[Session, Depends(get_db)]) -> None:
        db.rows.append(action)

    given = Session(EVENTS)

    @app.post("/")
    async def route(jobs: Jobs) -> None:
        jobs.add_task(audit, "a")  # type: ignore[call-overload]
        jobs.add_task(audit, "b", db=given)  # passed: not resolved

    aw.attach(app)  # overrides reach jobs through the served app
    TestClient(app).post("/")
    assert other == ["open", "commit ['a']", "close"]
    assert EVENTS == [] and given.rows == ["b"]


def test_request_bound_dependencies_are_refused_at_add_task() -> None:
    aw, app = make()
    errors: list[DependencyError] = []

    @app.post("/")
    async def route(jobs: Jobs) -> None:
        for func in (by_request, by_token):
            try:
                jobs.add_task(func)  # type: ignore[call-overload]
            except DependencyError as exc:
                errors.append(exc)
        jobs.add_task(functools.partial(print, "partials pass as they are"))

    assert TestClient(app).post("/").status_code == 200
    assert [e.param for e in errors] == ["path", "token"]
    for error in errors:
        assert str(error).startswith("jobs.add_task: ")
        assert "outside the request" in str(error)


def test_a_refused_add_task_fails_the_request() -> None:
    aw, app = make()

    def local(path: Annotated[str, Depends(needs_request)]) -> None: ...

    @app.post("/")
    async def route(jobs: Jobs) -> None:
        jobs.add_task(local)  # type: ignore[call-overload]  # raises in the route: the request fails

    with pytest.raises(DependencyError, match="request"):
        TestClient(app).post("/")
