"""docs/testing.md: the fixtures, enabled in a conftest.py at the root of your tests."""

from __future__ import annotations

import pytest

from afterwork import Afterwork
from examples.docs.testing_app import aw

pytest_plugins = ["afterwork.testing"]


@pytest.fixture
def afterwork_app() -> Afterwork:
    return aw  # your instance; afterwork_eager and afterwork_joined use it
