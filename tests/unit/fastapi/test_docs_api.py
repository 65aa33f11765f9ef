"""The example in docs/api.md, run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"


def example(name: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"<!-- example: {name}\b.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match is not None, f"no example {name!r} in {DOC}"
    return match.group(1)


async def test_the_mounting_example_works_and_is_locked() -> None:
    namespace: dict[str, Any] = {"__name__": "docs_api_example"}
    exec(compile(example("mounting"), str(DOC), "exec"), namespace)
    app, aw = namespace["app"], namespace["aw"]
    csrf = {"X-Afterwork-CSRF": "1"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/afterwork/jobs")).status_code == 401
        assert (await client.get("/afterwork/")).status_code == 401
        # A bearer header is not what this app takes, and not what a browser sends.
        bearer = {"Authorization": "Bearer change-me"}
        assert (await client.get("/afterwork/", headers=bearer)).status_code == 401
        wrong = await client.post("/login", json={"password": "guess"})
        assert wrong.status_code == 401 and "admin_session" not in client.cookies
        assert (await client.post("/login", json={"password": "change-me"})).status_code == 200
        cookie = next(c for c in client.cookies.jar if c.name == "admin_session")
        assert cookie.path == "/afterwork" and not cookie.secure
        assert cookie.has_nonstandard_attr("HttpOnly")
        response = await client.post(
            "/afterwork/tasks/send_email/enqueue",
            json={"args": ["ada@example.com", "Welcome"]},
            headers=csrf,
        )
        assert response.status_code == 201, response.text
        bad = await client.post(
            "/afterwork/tasks/send_email/enqueue",
            json={"args": ["ada@example.com", 5]},
            headers=csrf,
        )
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "args", "subject"]
        page = (await client.get("/afterwork/jobs")).json()
        assert [job["task"] for job in page["jobs"]] == ["send_email"]
        assert (await client.get("/afterwork/")).status_code == 200
    # Over HTTPS the cookie is Secure.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        assert (await client.post("/login", json={"password": "change-me"})).status_code == 200
        assert next(c for c in client.cookies.jar if c.name == "admin_session").secure
    await aw.aclose()
