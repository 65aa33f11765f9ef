"""FastAPI's background-task tutorial tests (tests/test_tutorial/test_background_tasks/),
run against the tutorial apps migrated to ``Jobs``: module-level ``TestClient(app)``
without ``with`` (the lifespan never runs), the original assertions unchanged.

The one line of afterwork setup, where a test needs it, is marked "# afterwork setup".
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi.testclient import TestClient

from . import tutorial001, tutorial001_registered, tutorial002

client = TestClient(tutorial001.app)
registered_client = TestClient(tutorial001_registered.app)
client002 = TestClient(tutorial002.app)


def test():
    log = Path("log.txt")
    if log.is_file():
        os.remove(log)  # pragma: no cover
    response = client.post("/send-notification/foo@example.com")
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Notification sent in the background"}
    with open("./log.txt") as f:
        assert "notification for foo@example.com: some notification" in f.read()


def test_registered_task():
    tutorial001_registered.aw.eager = True  # afterwork setup
    log = Path("log.txt")
    if log.is_file():
        os.remove(log)  # pragma: no cover
    response = registered_client.post("/send-notification/foo@example.com")
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Notification sent in the background"}
    with open("./log.txt") as f:
        assert "notification for foo@example.com: some notification" in f.read()


def test_dependency_injection():
    log = Path("log.txt")
    if log.is_file():
        os.remove(log)  # pragma: no cover
    response = client002.post("/send-notification/foo@example.com?q=some-query")
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Message sent"}
    with open("./log.txt") as f:
        assert "found query: some-query\nmessage to foo@example.com" in f.read()
