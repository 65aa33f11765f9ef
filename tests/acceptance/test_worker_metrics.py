"""``afterwork worker --metrics-port``: a real worker process serves Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from afterwork.backends.base import NewJob
from afterwork.backends.sqlite import SQLiteBackend
from afterwork.job import JobStatus, new_job_id

from ..waiting import eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

APP = """
from afterwork import Afterwork

aw = Afterwork(poll_interval=0.05)


@aw.task
async def ok(n: int) -> int:
    return n
"""


async def test_the_worker_serves_metrics_and_health_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "metrics_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    env = {**os.environ, "AFTERWORK_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path)])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "afterwork", "worker", "metrics_app:aw", "--metrics-port", "0",
        "--health-port", "0", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        bases: dict[str, str] = {}
        with anyio.fail_after(30):
            while len(bases) < 2:
                line = (await process.stderr.readline()).decode()
                assert line, "the worker exited before serving metrics"
                found = re.search(r"(metrics|health) served at (http://[\d.]+:\d+)", line)
                if found:
                    bases[found.group(1)] = found.group(2)
        base = bases["metrics"]
        assert base.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        assert bases["health"].startswith("http://127.0.0.1:") and bases["health"] != base
        async with httpx.AsyncClient(base_url=bases["health"], timeout=10) as client:
            live, ready = await client.get("/livez"), await client.get("/readyz")
            wrong = await client.get("/metrics")
        assert (live.status_code, live.text) == (200, "ok\n")
        assert (ready.status_code, ready.text) == (200, "ok\n")
        assert wrong.status_code == 404
        backend = SQLiteBackend(str(tmp_path / "afterwork.db"))
        await backend.open()
        try:
            job_id = new_job_id()
            await backend.enqueue([NewJob(id=job_id, task="metrics_app:ok", args=[1])])

            async def succeeded() -> bool:
                job = await backend.get(job_id)
                return job is not None and job.status is JobStatus.SUCCEEDED

            await eventually(succeeded, timeout=30)
        finally:
            await backend.aclose()
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            response = await client.get("/metrics")
            missing = await client.get("/nope")
        assert response.status_code == 200 and missing.status_code == 404
        values = {
            (sample.name, sample.labels.get("outcome")): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name == "afterwork_jobs_total" and sample.labels["task"] == "metrics_app:ok"
        }
        assert "afterwork_workers 1.0" in response.text.splitlines()  # itself
        # enqueued by another process: this worker counts only what passed through it
        assert values == {
            ("afterwork_jobs_total", "started"): 1.0,
            ("afterwork_jobs_total", "succeeded"): 1.0,
        }
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
    assert process.returncode == 0


async def test_json_logs_carry_the_job_and_the_worker(tmp_path: Path) -> None:
    (tmp_path / "metrics_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    env = {**os.environ, "AFTERWORK_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path)])
    backend = SQLiteBackend(str(tmp_path / "afterwork.db"))
    await backend.open()
    job_id = new_job_id()
    await backend.enqueue([NewJob(id=job_id, task="metrics_app:ok", args=[1])])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "afterwork", "worker", "metrics_app:aw", "--log-format", "json",
        cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:

        async def succeeded() -> bool:
            job = await backend.get(job_id)
            return job is not None and job.status is JobStatus.SUCCEEDED

        await eventually(succeeded, timeout=30)
    finally:
        await backend.aclose()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            err = await process.stderr.read()
            await process.wait()
    assert process.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    (done,) = [line for line in lines if line.get("action") == "job_succeeded"]
    assert done["level"] == "INFO" and done["logger"] == "afterwork.runner"
    assert done["job"] == {"id": job_id, "task": "metrics_app:ok", "queue": "default", "attempt": 1}
    assert done["worker"]["id"] and done["message"].endswith("succeeded")
