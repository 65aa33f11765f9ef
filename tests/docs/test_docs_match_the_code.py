"""Pages that said what the code does not: each claim checked against the code."""

from __future__ import annotations

import pytest

from afterwork import Afterwork, ConfigurationError
from afterwork.backends.redis import RedisBackend

from .conftest import ROOT, python_blocks


def test_the_redis_page_imports_what_it_uses() -> None:
    block = next(b for b in python_blocks("redis.md") if "RedisBackend" in b)
    assert "from afterwork.backends.redis import RedisBackend" in block
    namespace: dict[str, object] = {}
    exec(compile(block, "docs/redis.md", "exec"), namespace)  # builds, connects to nothing
    aw = namespace["aw"]
    assert isinstance(aw, Afterwork) and isinstance(aw.backend, RedisBackend)
    assert aw.backend.prefix == "myapp"


def test_the_readme_offers_no_postgres_extra_while_postgres_is_unsupported() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "afterwork[postgres]" not in readme
    with pytest.raises(ConfigurationError):
        Afterwork("postgresql://localhost/jobs")


def test_the_services_page_does_not_call_shipped_features_planned() -> None:
    page = (ROOT / "docs" / "services.md").read_text()
    assert "planned" not in page
    assert "Depends(get_bus)" in page  # the feature it documents, tested in test_services_md
