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


def test_the_redis_page_cluster_and_sentinel_urls_build_what_it_says() -> None:
    block = next(b for b in python_blocks("redis.md") if "redis+cluster://" in b)
    namespace: dict[str, object] = {"Afterwork": Afterwork}
    lines = block.splitlines()
    exec(compile(lines[0], "docs/redis.md", "exec"), namespace)  # builds, connects to nothing
    cluster = namespace["aw"]
    assert isinstance(cluster, Afterwork) and isinstance(cluster.backend, RedisBackend)
    assert cluster.backend.events_key == "{myapp}:events"  # the hash tag the page describes
    exec(compile(lines[1], "docs/redis.md", "exec"), namespace)
    sentinel = namespace["aw"]
    assert isinstance(sentinel, Afterwork) and isinstance(sentinel.backend, RedisBackend)
    assert sentinel.backend.events_key == "myapp:events"  # no tag off a cluster


def test_the_readme_and_the_postgres_page_name_the_store_that_exists() -> None:
    from afterwork.backends.postgres import PostgresBackend

    readme = (ROOT / "README.md").read_text()
    assert "afterwork[postgres]" in readme
    page = (ROOT / "docs" / "postgres.md").read_text()
    assert "?schema=" in page and "afterwork db migrate" in page
    for url in ("postgresql://localhost/jobs?schema=jobs", "postgres://localhost/jobs?schema=jobs"):
        backend = Afterwork(url).backend
        assert isinstance(backend, PostgresBackend) and backend.schema == "jobs"
    with pytest.raises(ConfigurationError):
        Afterwork("postgresql://localhost/jobs?schema=Bad-Name")
    (block,) = python_blocks("postgres.md")  # builds the store (connects on open only)
    scope: dict[str, object] = {"Afterwork": Afterwork}
    exec(block, scope)
    shown = scope["aw"]
    assert isinstance(shown, Afterwork) and isinstance(shown.backend, PostgresBackend)


def test_the_services_page_does_not_call_shipped_features_planned() -> None:
    page = (ROOT / "docs" / "services.md").read_text()
    assert "planned" not in page
    assert "Depends(get_bus)" in page  # the feature it documents, tested in test_services_md
