"""A bounded schemathesis run over the router's OpenAPI schema, on a SQLite store.

Every operation gets a few examples (``max_examples`` each, well under a minute in all):
no input may give a 500, a response that breaks its own schema, or a response without
the security headers.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import Depends, FastAPI
from hypothesis import HealthCheck, settings

from afterwork import Afterwork, JobContext
from afterwork.fastapi.router import SECURITY_HEADERS

from ...integration.conftest import AUTH, CSRF, require_admin

# schemathesis collects the schema at import time, so the store's folder is made here and
# removed by the module fixture below.
_folder = Path(tempfile.mkdtemp(prefix="afterwork-fuzz-"))
aw = Afterwork(f"sqlite:///{_folder}/afterwork.db")


@aw.task(name="add")
async def add(a: int, b: int) -> int:
    return a + b


@aw.task(name="echo")
async def echo(value: Any, ctx: JobContext) -> Any:
    return value


app = FastAPI()
app.include_router(
    aw.router(auth=Depends(require_admin), stream_lifetime=0.05, heartbeat=0.01),
    prefix="/afterwork",
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _store_folder() -> Iterator[None]:
    yield
    if aw.is_open:
        aw.run_sync(aw.aclose)
    shutil.rmtree(_folder, ignore_errors=True)


@schemathesis.check
def security_headers(ctx: schemathesis.CheckContext, response: Any, case: Any) -> bool:
    missing = [name for name in SECURITY_HEADERS if name.lower() not in response.headers]
    if missing:
        raise AssertionError(f"{response.status_code} lacks {missing}")
    return True


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_never_fails_on_any_input(case: schemathesis.Case[Any]) -> None:
    # Statuses the schema does not list (404 for an unknown job, 409) are fine; a 500, a
    # response that breaks its schema or one without the security headers is not.
    case.call_and_validate(
        headers={**AUTH, **CSRF},
        excluded_checks=[
            schemathesis.checks.status_code_conformance,
            schemathesis.checks.positive_data_acceptance,
        ],
        additional_checks=[security_headers],
    )
