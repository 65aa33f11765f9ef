from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # afterwork runs on asyncio (what uvicorn and FastAPI use).
    return "asyncio"
