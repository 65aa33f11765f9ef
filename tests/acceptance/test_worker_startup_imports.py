"""``afterwork worker`` runs its first job without loading what it does not need.

Start-up time is measured in ``bench/startup_bench.py`` and ``bench/startup_phases.py``,
never here: this checks what makes it, without a clock. A worker process started from the
command line runs a job that writes down the modules loaded in that process; the store
drivers of other URLs, the CLI framework, FastAPI, pydantic (the job's arguments are plain
values), Prometheus and OpenTelemetry must not be among them, nor what only some apps use
(cron time zones, plain ``def`` middleware, ``secrets``' HMAC), on SQLite, Redis and
PostgreSQL alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from afterwork import Afterwork
from afterwork._cli_worker import parse_worker

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

APP = """
import json, sys
from afterwork import Afterwork

aw = Afterwork({url!r})

@aw.task(name="modules")
async def modules(path: str, n: int, ratio: float, flag: bool) -> None:
    with open(path, "w") as out:
        json.dump(sorted(sys.modules), out)
"""

#: Top-level packages a SQLite worker running a job with plain arguments never needs.
NOT_LOADED = (
    "redis",
    "asyncpg",
    "psycopg",
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_core",
    "prometheus_client",
    "opentelemetry",
    "typer",
    "click",
    "rich",
    "httpx",
    "logging.config",
    "multiprocessing.connection",
    # Only for what some apps use: cron schedules (their time zone and expression), a
    # plain ``def`` middleware (run in a thread that calls back into the loop).
    "zoneinfo",
    "cronsim",
    "anyio.from_thread",
    # Tokens and worker ids come from ``os.urandom``: no HMAC, no hashlib, for SQLite.
    "secrets",
    "hmac",
    "hashlib",
)

#: What a worker on another store must not load either. Not banned there: what the
#: drivers load themselves (``hashlib``, ``secrets``: redis-py's script hashes, asyncpg's
#: authentication; redis-py 8 loads OpenTelemetry's SDK where it is installed, as here), and
#: ``pydantic_core``, the Redis store's JSON codec (pydantic itself stays out).
_DRIVERS_OWN = ("hashlib", "secrets", "hmac")
NOT_LOADED_BY_STORE = {
    "redis": tuple(
        n for n in NOT_LOADED if n not in ("redis", "opentelemetry", "pydantic_core", *_DRIVERS_OWN)
    )
    + ("sqlite3", "_sqlite3"),
    "postgres": tuple(n for n in NOT_LOADED if n not in ("asyncpg", *_DRIVERS_OWN))
    + ("sqlite3", "_sqlite3"),
}


def _env(folder: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(folder)])}
    env.pop("AFTERWORK_URL", None)
    # Not measured by coverage (scripts/test measures every subprocess from its start):
    # coverage loads ``sqlite3`` and ``hashlib`` itself, which this test bans.
    env.pop("COVERAGE_PROCESS_START", None)
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    return env


def worker(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "afterwork", "worker", "app:aw", *args],
        cwd=folder,
        env=_env(folder),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("args", [(), ("--concurrency", "2", "--log-format=json")])
async def test_a_sqlite_worker_runs_a_job_without_heavy_modules(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    loaded = await _loaded_by_a_worker(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, *args)
    assert "afterwork._engine.worker" in loaded and "afterwork.backends.sqlite" in loaded
    found = sorted(
        name
        for name in loaded
        for banned in NOT_LOADED
        if name == banned or name.startswith(f"{banned}.")
    )
    assert found == [], f"a SQLite worker loaded {found}"


def loaded_by_a_worker(url: str, folder: Path) -> set[str]:
    """The modules loaded by ``afterwork worker`` on ``url`` once it ran a job."""
    return anyio.run(_loaded_by_a_worker, url, folder)


async def _loaded_by_a_worker(url: str, folder: Path, *args: str) -> set[str]:
    (folder / "app.py").write_text(APP.format(url=url))
    seen = folder / "modules.json"
    async with Afterwork(url) as aw:

        @aw.task(name="modules")
        async def modules(path: str, n: int, ratio: float, flag: bool) -> None: ...

        job = await modules.enqueue(str(seen), 1, 0.5, True)
        proc = worker(folder, *args)
        try:
            done = await aw.wait_for_job(job.id, timeout=60)
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=30)
    assert done.status.value == "succeeded", (done.error, stderr.decode())
    assert proc.returncode == 0, stderr.decode()
    return set(json.loads(seen.read_text()))


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_a_server_store_worker_loads_its_driver_only(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "redis":
        url = f"{request.getfixturevalue('redis_url')}?prefix=afterwork:t{uuid.uuid4().hex[:12]}"
        driver, module = "redis", "afterwork.backends.redis"
    else:
        url = f"{request.getfixturevalue('postgres_url')}?schema=t{uuid.uuid4().hex[:12]}"
        driver, module = "asyncpg", "afterwork.backends.postgres"
    loaded = loaded_by_a_worker(url, tmp_path)
    assert {"afterwork._engine.worker", module, driver} <= loaded
    found = sorted(
        name
        for name in loaded
        for banned in NOT_LOADED_BY_STORE[store]
        if name == banned or name.startswith(f"{banned}.")
    )
    assert found == [], f"a {store} worker loaded {found}"


def test_the_plain_worker_command_is_parsed_without_typer() -> None:
    assert parse_worker(["worker", "app:aw"]) == {"target": "app:aw"}
    assert parse_worker(
        ["worker", "-c", "4", "app:aw", "--queues=a,b", "--grace", "2.5", "--log-level", "debug"]
    ) == {
        "target": "app:aw",
        "concurrency": 4,
        "queues": "a,b",
        "grace": 2.5,
        "log_level": "debug",
    }
    # Everything else goes to typer, which explains what is wrong or does the rest.
    for argv in (
        [],
        ["worker"],
        ["worker", "--help"],
        ["worker", "app:aw", "--reload"],
        ["worker", "app:aw", "--processes", "2"],
        ["worker", "app:aw", "-c", "0"],
        ["worker", "app:aw", "-c", "many"],
        ["worker", "app:aw", "-c"],
        ["worker", "app:aw", "-c=2"],
        ["worker", "app:aw", "-c", "2", "-c", "3"],
        ["worker", "app:aw", "other:aw"],
        ["worker", "app:aw", "--log-format", "xml"],
        ["worker", "app:aw", "--log-level", "chatty"],
        ["worker", "app:aw", "--isolation", "thread"],
        ["worker", "app:aw", "--metrics-port", "70000"],
        ["--version"],
        ["jobs", "list"],
    ):
        assert parse_worker(argv) is None, argv


def test_a_refused_value_is_still_explained(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP.format(url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    proc = worker(tmp_path, "--concurrency", "0")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--concurrency" in stderr.decode()
