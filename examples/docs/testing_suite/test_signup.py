"""docs/testing.md: tests written the usual FastAPI way, run by tests/docs/test_testing_md.py."""

from __future__ import annotations

from fastapi.testclient import TestClient

from afterwork import Afterwork
from afterwork.testing import eager
from examples.docs.testing_app import OUTBOX, app, aw

client = TestClient(app)  # module level, no ``with``: the lifespan does not run


def test_signup_sends_the_welcome() -> None:
    with eager(aw):  # registered tasks run inline, after the response
        response = client.post("/signup", params={"email": "ada@example.com"})
    assert response.status_code == 200
    assert OUTBOX[-2:] == ["ada@example.com", "audit: signup ada@example.com"]


def test_with_the_fixture(afterwork_eager: Afterwork) -> None:
    client.post("/signup", params={"email": "grace@example.com"})
    assert "grace@example.com" in OUTBOX


def test_with_a_real_worker() -> None:
    with TestClient(app) as real:  # runs the lifespan: a worker in the app
        job_id = real.post("/signup", params={"email": "alan@example.com"}).json()["job"]
        aw.join_sync(timeout=10)  # until nothing is due or running
        assert "alan@example.com" in OUTBOX
        job = aw.run_sync(lambda: aw.get_job(job_id))
        assert job is not None and job.status == "succeeded"
