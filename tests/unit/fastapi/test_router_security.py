"""The router's outer layer: auth before the body, Host and Origin, headers on every response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from afterwork import Afterwork, ConfigurationError
from afterwork.fastapi.router import SECURITY_HEADERS

from ...integration.conftest import AUTH, CSRF, require_admin

pytestmark = pytest.mark.anyio

PREFIX = "/afterwork"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def aw() -> AsyncIterator[Afterwork]:
    instance = Afterwork("memory://")

    @instance.task(name="echo")
    async def echo(value: str) -> str:
        return value

    yield instance
    await instance.aclose()


Factory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def make_client(aw: Afterwork) -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def make(
        base_url: str = "http://testserver", app: FastAPI | None = None, **options: Any
    ) -> httpx.AsyncClient:
        if app is None:
            options.setdefault("auth", Depends(require_admin))
            app = FastAPI()
            app.include_router(aw.router(**options), prefix=PREFIX)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url=base_url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def assert_secured(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status_code, name)


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"args": [', b"[1, 2"])
async def test_an_anonymous_malformed_body_gets_401_not_422(
    make_client: Factory, aw: Afterwork, body: bytes
) -> None:
    client = make_client()
    url = f"{PREFIX}/tasks/echo/enqueue"
    anonymous = await client.post(url, content=body, headers={**CSRF, **JSON})
    assert anonymous.status_code == 401, anonymous.text
    assert_secured(anonymous)
    wrong = {"Authorization": "Bearer wrong", **CSRF, **JSON}
    assert (await client.post(url, content=body, headers=wrong)).status_code == 401
    no_csrf = await client.post(url, content=body, headers={**AUTH, **JSON})
    assert no_csrf.status_code == 403
    authorised = await client.post(url, content=body, headers={**AUTH, **CSRF, **JSON})
    assert authorised.status_code == 422
    assert_secured(authorised)
    assert await aw.list_jobs() == []


@pytest.mark.parametrize(
    "origin",
    [
        "https://testserver",  # the https twin of an http host
        "http://testserver:8080",
        "http://evil.example",
        "null",
        "http://testserver.evil.example",
    ],
)
async def test_an_origin_other_than_the_requests_own_is_refused(
    make_client: Factory, aw: Afterwork, origin: str
) -> None:
    client = make_client()
    job = await aw.get_task("echo").enqueue("x")
    headers = {**AUTH, **CSRF, "Origin": origin}
    response = await client.post(f"{PREFIX}/jobs/{job.id}/cancel", headers=headers)
    assert response.status_code == 403, response.text
    assert_secured(response)
    own = {**AUTH, **CSRF, "Origin": "http://testserver"}
    assert (await client.post(f"{PREFIX}/jobs/{job.id}/cancel", headers=own)).status_code == 200


async def test_trusted_origins_replace_the_default(make_client: Factory, aw: Afterwork) -> None:
    client = make_client(trusted_origins=["https://admin.example", "http://LOCALHOST:8000/"])
    url = f"{PREFIX}/jobs/{(await aw.get_task('echo').enqueue('x')).id}/cancel"
    for origin, status in [
        ("http://testserver", 403),
        ("http://admin.example", 403),
        ("https://admin.example", 200),
    ]:
        response = await client.post(url, headers={**AUTH, **CSRF, "Origin": origin})
        assert response.status_code == status, (origin, response.text)
    with pytest.raises(ConfigurationError):
        aw.router(auth=Depends(require_admin), trusted_origins=["admin.example"])
    with pytest.raises(ConfigurationError):
        aw.router(auth=Depends(require_admin), trusted_origins="https://admin.example")


async def test_served_open_an_unknown_host_is_refused(make_client: Factory) -> None:
    # DNS rebinding: a page on attacker.example, its name now resolving to 127.0.0.1, is
    # same-origin with itself: Host and Origin agree, and only the Host gives it away.
    rebound = make_client("http://attacker.example:8000", insecure_no_auth=True, auth=None)
    same_origin = {**CSRF, "Origin": "http://attacker.example:8000"}
    for method, path in [("GET", "/jobs"), ("GET", "/"), ("POST", "/tasks/echo/enqueue")]:
        response = await rebound.request(method, PREFIX + path, headers=same_origin, json={})
        assert response.status_code == 403, (method, path, response.text)
        assert_secured(response)
    for base in ["http://localhost:8000", "http://127.0.0.1", "http://[::1]:9000"]:
        local = make_client(base, insecure_no_auth=True, auth=None)
        assert (await local.get(f"{PREFIX}/jobs")).status_code == 200, base
    listed = make_client(
        "http://jobs.internal",
        insecure_no_auth=True,
        auth=None,
        trusted_origins=["http://jobs.internal"],
    )
    assert (await listed.get(f"{PREFIX}/jobs")).status_code == 200


async def test_every_response_under_the_router_carries_the_headers(
    make_client: Factory,
) -> None:
    client = make_client()
    cases: list[tuple[str, str, int]] = [
        ("GET", "/no/such/path", 404),
        ("GET", "/jobs/", 307),
        ("DELETE", "/jobs", 405),
        ("GET", "/jobs?limit=0", 422),
        ("GET", "/jobs/x", 404),
        ("POST", "/tasks/echo/enqueue", 422),
    ]
    for method, path, status in cases:
        response = await client.request(
            method, PREFIX + path, headers={**AUTH, **CSRF}, json={"args": [1, 2]}
        )
        assert response.status_code == status, (method, path, response.text)
        assert_secured(response)
    redirect = await client.get(f"{PREFIX}/jobs/", headers=AUTH)
    assert redirect.headers["location"] == f"http://testserver{PREFIX}/jobs"
    refused = await client.delete(f"{PREFIX}/jobs", headers={**AUTH, **CSRF})
    assert refused.headers["allow"] == "GET"
    # Anonymous callers learn nothing about which paths exist.
    assert (await client.get(f"{PREFIX}/no/such/path")).status_code == 401


async def test_a_500_carries_the_headers_and_an_apps_own_handler_still_runs(
    make_client: Factory, aw: Afterwork, caplog: pytest.LogCaptureFixture
) -> None:
    class LoginRequired(Exception):
        pass

    def broken_auth(request: Request) -> None:
        if request.headers.get("x-login") == "1":
            raise LoginRequired
        raise RuntimeError("the auth backend is down")

    app = FastAPI()
    app.include_router(aw.router(auth=broken_auth), prefix=PREFIX)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> PlainTextResponse:
        return PlainTextResponse("log in first", status_code=401)

    client = make_client(app=app)
    response = await client.get(f"{PREFIX}/jobs")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert_secured(response)
    assert "the auth backend is down" in caplog.text
    handled = await client.get(f"{PREFIX}/jobs", headers={"x-login": "1"})
    assert (handled.status_code, handled.text) == (401, "log in first")


async def test_paths_with_newlines_get_the_headers_too(make_client: Factory) -> None:
    client = make_client()
    for path in ["/tasks/a%0Ab/enqueue", "/jobs/x%0A", "/%0A", "/static/%0Aapp.js"]:
        response = await client.post(PREFIX + path, headers={**AUTH, **CSRF}, json={})
        assert response.status_code in (404, 405), (path, response.status_code)
        assert_secured(response)
