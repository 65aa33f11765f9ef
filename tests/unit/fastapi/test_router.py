"""``aw.router()``: locked by default, every route guarded, CSRF, headers, body limits."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

from afterwork import Afterwork, ConfigurationError, Job, JobStatus, ServiceContext
from afterwork.fastapi.router import CSRF_HEADER, create_router

from ...integration.conftest import AUTH, CSRF, require_admin

pytestmark = pytest.mark.anyio

SECRET = "<b>secret-job-data</b>"
PREFIX = "/afterwork"


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://")

    @instance.task(name="echo")
    async def echo(value: str) -> str:
        return value

    @instance.cron("0 3 * * *", name="nightly")
    async def nightly() -> str:
        return "cleaned"

    @instance.service(name="pump")
    async def pump(ctx: ServiceContext) -> None:
        await ctx.wait_stopping()

    yield instance
    await instance.aclose()


@pytest.fixture
def router(aw: Afterwork) -> APIRouter:
    return aw.router(auth=Depends(require_admin))


@pytest.fixture
async def client(router: APIRouter) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(router, prefix=PREFIX)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def job(aw: Afterwork) -> Job:
    return await aw.get_task("echo").enqueue(SECRET)


def concrete_path(route: APIRoute, job_id: str) -> str:
    values = {"job_id": job_id, "name": "echo", "path": "no/such/path"}
    if route.path.startswith("/schedules/"):
        values["name"] = "nightly"
    if route.path.startswith("/static/"):
        values["name"] = "app.js"
    return PREFIX + re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], route.path)


def api_routes(router: APIRouter) -> list[APIRoute]:
    routes = []
    for route in router.routes:
        # Only APIRoutes get the router's dependencies: a plain Starlette route or a
        # mount added to this router would bypass auth, so it fails here.
        assert isinstance(route, APIRoute), f"{route!r} is not an APIRoute: it skips auth"
        routes.append(route)
    return routes


def test_auth_is_required() -> None:
    aw = Afterwork("memory://")
    with pytest.raises(ConfigurationError, match="insecure_no_auth"):
        aw.router()
    with pytest.raises(ConfigurationError, match="not both"):
        aw.router(auth=Depends(require_admin), insecure_no_auth=True)
    with pytest.raises(TypeError):
        create_router(aw, auth=42)  # type: ignore[arg-type]


async def test_the_opt_out_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    aw = Afterwork("memory://")
    with caplog.at_level(logging.WARNING, logger="afterwork"):
        router = aw.router(insecure_no_auth=True)
    assert "WITHOUT authentication" in caplog.text
    app = FastAPI()
    app.include_router(router)
    # Served open, only loopback hosts are answered (DNS rebinding).
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        assert (await client.get("/jobs")).status_code == 200
        assert (await client.post("/jobs/x/cancel")).status_code == 403  # CSRF still applies
    await aw.aclose()


async def test_every_route_refuses_a_caller_without_credentials(
    router: APIRouter, client: httpx.AsyncClient, job: Job
) -> None:
    routes = api_routes(router)
    paths = {route.path for route in routes}
    # The routes this issue adds; a new route is checked below without being listed here.
    assert {
        "/",
        "/static/{name}",
        "/info",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/retry",
        "/queues",
        "/queues/{name:path}/pause",
        "/queues/{name:path}/resume",
        "/bulk/retry",
        "/bulk/cancel",
        "/tasks",
        "/tasks/{name:path}/enqueue",
        "/events",
        "/schedules",
        "/schedules/{name:path}/trigger",
        "/services",
    } <= paths
    bad_credentials: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": AUTH["Authorization"] + "\n"},
        {"Authorization": AUTH["Authorization"].upper()},
        {"Cookie": "afterwork_session=wrong"},
    ]
    checked = 0
    for route in routes:
        for method in sorted(route.methods or ()):
            url = concrete_path(route, job.id)
            for headers in bad_credentials:
                if method != "GET":
                    headers = {**headers, **CSRF}  # even with the CSRF header
                try:
                    response = await client.request(
                        method, url, headers=headers, json={"args": ["x"]}
                    )
                except httpx.LocalProtocolError:
                    continue  # httpx itself refuses a header with a newline: fine too
                assert response.status_code in (401, 403), (method, url, headers)
                assert job.id not in response.text and "secret-job-data" not in response.text
                assert "access-control-allow-origin" not in response.headers
                assert response.headers["x-content-type-options"] == "nosniff"
                checked += 1
    assert checked >= len(routes) * 4


async def test_state_changing_routes_need_the_csrf_header(
    router: APIRouter, client: httpx.AsyncClient, job: Job
) -> None:
    unsafe = [
        (method, concrete_path(route, job.id))
        for route in api_routes(router)
        for method in route.methods or ()
        if method not in ("GET", "HEAD", "OPTIONS")
    ]
    assert len(unsafe) >= 4
    refused: list[dict[str, str]] = [
        AUTH,
        {**AUTH, CSRF_HEADER: "0"},
        {**AUTH, **CSRF, "Origin": "https://evil.example"},
        {**AUTH, **CSRF, "Origin": "http://testserver.evil.example"},
        {**AUTH, **CSRF, "Sec-Fetch-Site": "cross-site"},
    ]
    for method, url in unsafe:
        for headers in refused:
            response = await client.request(method, url, headers=headers, json={"args": ["x"]})
            assert response.status_code == 403, (method, url, headers, response.text)
    # The same request from the dashboard's own origin goes through.
    response = await client.post(
        f"{PREFIX}/jobs/{job.id}/cancel", headers={**AUTH, **CSRF, "Origin": "http://testserver"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


async def test_responses_carry_a_strict_policy(client: httpx.AsyncClient) -> None:
    for path, kind in [
        ("/", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/app.css", "text/css"),
        ("/jobs", "application/json"),
    ]:
        response = await client.get(PREFIX + path, headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
        csp = response.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "access-control-allow-origin" not in response.headers
    assert (await client.get(f"{PREFIX}/static/../router.py", headers=AUTH)).status_code == 404
    assert (await client.get(f"{PREFIX}/static/index.html", headers=AUTH)).status_code == 404


def test_dashboard_files_insert_text_never_html() -> None:
    static = resources.files("afterwork.fastapi").joinpath("static")
    script = static.joinpath("app.js").read_text()
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("]:
        assert sink not in script, sink
    assert "new Function" not in script
    page = static.joinpath("index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="static/app.js" defer>']
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son\w+=", page)
    assert "http://" not in page and "https://" not in page  # no CDN


async def test_a_body_is_read_only_up_to_the_limit(aw: Afterwork) -> None:
    app = FastAPI()
    app.include_router(aw.router(auth=Depends(require_admin), max_body=1024 * 1024))
    chunks_read = 0

    async def body() -> AsyncIterator[bytes]:  # 100 MiB, chunked (no Content-Length)
        nonlocal chunks_read
        yield b'{"args": ["'
        for _ in range(1600):
            chunks_read += 1
            yield b"x" * (64 * 1024)
        yield b'"]}'

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        response = await client.post(
            "/tasks/echo/enqueue", content=body(), headers={**AUTH, **CSRF}
        )
        assert response.status_code == 413
        assert chunks_read <= 17  # 1 MiB and one chunk: the rest was never read
        declared = await client.post(
            "/tasks/echo/enqueue",
            content=b"{}",
            headers={**AUTH, **CSRF, "Content-Length": str(100 * 1024 * 1024)},
        )
        assert declared.status_code == 413
    assert await aw.list_jobs() == []


async def test_payload_over_the_store_limit_is_413(
    aw: Afterwork, client: httpx.AsyncClient
) -> None:
    over = "x" * aw.config.max_payload  # its JSON (quotes, brackets) is over the limit
    response = await client.post(
        f"{PREFIX}/tasks/echo/enqueue", json={"args": [over]}, headers={**AUTH, **CSRF}
    )
    assert response.status_code == 413
    assert await aw.list_jobs() == []


async def test_schedules_and_services_routes(aw: Afterwork, client: httpx.AsyncClient) -> None:
    info = (await client.get(f"{PREFIX}/info", headers=AUTH)).json()
    assert info["schedules"] and info["services"] and info["event_resume"]  # memory resumes too
    (schedule,) = (await client.get(f"{PREFIX}/schedules", headers=AUTH)).json()
    assert (schedule["name"], schedule["spec"], schedule["kind"]) == (
        "nightly",
        "0 3 * * *",
        "cron",
    )
    assert schedule["next_run"] is not None and schedule["last_run"] is None
    response = await client.post(f"{PREFIX}/schedules/nightly/trigger", headers={**AUTH, **CSRF})
    assert response.status_code == 200
    body = response.json()
    assert body["schedule"] == "nightly"
    (job,) = await aw.list_jobs()
    assert body["job"]["id"] == job.id and job.task == aw.get_task(body["job"]["task"]).name
    missing = await client.post(f"{PREFIX}/schedules/nope/trigger", headers={**AUTH, **CSRF})
    assert missing.status_code == 404
    (service,) = (await client.get(f"{PREFIX}/services", headers=AUTH)).json()
    assert (service["name"], service["state"], service["crashes"]) == ("pump", "pending", 0)
    assert (service["singleton"], service["instances"]) == (False, [])  # not started here


async def test_info_hides_sections_an_instance_does_not_use() -> None:
    aw = Afterwork("memory://")
    app = FastAPI()
    app.include_router(aw.router(auth=Depends(require_admin)), prefix=PREFIX)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        info = (await client.get(f"{PREFIX}/info", headers=AUTH)).json()
        assert not info["schedules"] and not info["services"]
        assert (await client.get(f"{PREFIX}/schedules", headers=AUTH)).json() == []
    await aw.aclose()


async def test_the_api_is_in_the_apps_openapi_schema(client: httpx.AsyncClient) -> None:
    schema: dict[str, Any] = (await client.get("/openapi.json")).json()
    for path in ["/jobs", "/jobs/{job_id}", "/queues", "/tasks", "/tasks/{name}/enqueue"]:
        assert PREFIX + path in schema["paths"], path
    assert "JobOut" in schema["components"]["schemas"]
    assert PREFIX + "/" not in schema["paths"]  # the dashboard is not an API


async def test_enqueue_answers_201_for_a_new_job_and_200_for_the_job_holding_the_key(
    aw: Afterwork, client: httpx.AsyncClient
) -> None:
    url = f"{PREFIX}/tasks/echo/enqueue"
    body = {"args": ["hi"], "options": {"key": "greeting"}}
    first = await client.post(url, json=body, headers={**AUTH, **CSRF})
    again = await client.post(url, json=body, headers={**AUTH, **CSRF})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(await aw.list_jobs()) == 1


async def test_pause_and_resume_a_queue(aw: Afterwork, client: httpx.AsyncClient) -> None:
    await aw.tasks["echo"].enqueue("x")
    paused = await client.post(f"{PREFIX}/queues/default/pause", headers={**AUTH, **CSRF})
    assert paused.status_code == 200 and paused.json() == {"queue": "default", "paused": True}
    assert await aw.paused_queues() == {"default"}
    queues = {q["queue"]: q for q in (await client.get(f"{PREFIX}/queues", headers=AUTH)).json()}
    assert queues["default"]["paused"] is True
    resumed = await client.post(f"{PREFIX}/queues/default/resume", headers={**AUTH, **CSRF})
    assert resumed.json() == {"queue": "default", "paused": False}
    assert await aw.paused_queues() == frozenset()
    bad = await client.post(f"{PREFIX}/queues/_reserved/pause", headers={**AUTH, **CSRF})
    assert bad.status_code == 422
    assert await aw.paused_queues() == frozenset()


async def test_a_waiting_job_says_why_through_the_api(
    aw: Afterwork, client: httpx.AsyncClient
) -> None:
    job = await aw.tasks["echo"].enqueue("x")
    url = f"{PREFIX}/jobs/{job.id}"
    assert (await client.get(url, headers=AUTH)).json()["waiting_reason"] is None
    await aw.pause("default")
    shown = (await client.get(url, headers=AUTH)).json()
    assert shown["waiting_reason"] == (
        "paused queue: 'default' is paused (it starts nothing until resumed)"
    )


async def test_bulk_cancel_and_retry_in_one_call_each(
    aw: Afterwork, client: httpx.AsyncClient
) -> None:
    echo = aw.tasks["echo"]
    ids = {(await echo.enqueue(str(n))).id for n in range(3)}
    headers = {**AUTH, **CSRF}
    dry = await client.post(f"{PREFIX}/bulk/cancel", json={"dry_run": True}, headers=headers)
    assert dry.json()["matched"] >= len(ids) and dry.json()["changed"] == 0
    body = {"task": "echo", "status": ["queued"]}
    done = await client.post(f"{PREFIX}/bulk/cancel", json=body, headers=headers)
    assert done.status_code == 200 and done.json()["changed"] == done.json()["matched"] >= 3
    assert ids <= {j.id for j in await aw.list_jobs(status=JobStatus.CANCELLED)}
    again = await client.post(
        f"{PREFIX}/bulk/retry", json={"status": ["cancelled"], "since": 3600}, headers=headers
    )
    assert again.json()["changed"] == again.json()["matched"] >= 3
    assert ids <= {j.id for j in await aw.list_jobs(status=JobStatus.QUEUED)}
    wrong = await client.post(f"{PREFIX}/bulk/retry", json={"status": ["queued"]}, headers=headers)
    assert wrong.status_code == 422


async def test_services_route_lists_each_running_instance_with_host_and_pid() -> None:
    import os
    import socket

    aw = Afterwork("memory://")

    @aw.service(name="everywhere")
    async def everywhere(ctx: ServiceContext) -> None:
        await ctx.wait_stopping()

    @aw.service(name="leader", singleton=True)
    async def leader(ctx: ServiceContext) -> None:
        await ctx.wait_stopping()

    app = FastAPI()
    app.include_router(aw.router(auth=Depends(require_admin)), prefix=PREFIX)
    transport = httpx.ASGITransport(app=app)
    async with (
        aw,
        aw.runtime(worker=False),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        body = (await client.get(f"{PREFIX}/services", headers=AUTH)).json()
    here = {"host": socket.gethostname(), "pid": os.getpid(), "local": True, "state": "running"}
    assert [
        (s["name"], s["singleton"], [{k: i[k] for k in here} for i in s["instances"]]) for s in body
    ] == [("everywhere", False, [here]), ("leader", True, [here])]
    assert all(i["since"] is not None for s in body for i in s["instances"])
    await aw.aclose()
