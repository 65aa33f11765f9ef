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


def test_each_of_n_processes_gets_its_own_metrics_port() -> None:
    from afterwork._cli_processes import metrics_ports

    assert metrics_ports(None, "127.0.0.1") is None
    fixed = metrics_ports(9100, "0.0.0.0")
    assert fixed is not None
    assert [fixed(i) for i in (0, 2)] == [
        ["--metrics-port", "9100", "--metrics-host", "0.0.0.0"],
        ["--metrics-port", "9102", "--metrics-host", "0.0.0.0"],
    ]
    any_port = metrics_ports(0, "127.0.0.1", 8)
    assert any_port is not None and any_port(3)[1] == "0"
    with pytest.raises(ValueError, match="past port 65535"):
        metrics_ports(65535, "127.0.0.1", 2)


async def test_with_processes_every_process_serves_what_it_ran(tmp_path: Path) -> None:
    (tmp_path / "metrics_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    env = {**os.environ, "AFTERWORK_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path)])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "afterwork", "worker", "metrics_app:aw", "--processes", "2",
        "--metrics-port", "0", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    backend = SQLiteBackend(str(tmp_path / "afterwork.db"))
    try:
        bases: set[str] = set()
        with anyio.fail_after(60):
            while len(bases) < 2:
                line = (await process.stderr.readline()).decode()
                assert line, "the supervisor exited before its processes served metrics"
                found = re.search(r"metrics served at (http://127\.0\.0\.1:\d+)", line)
                if found:
                    bases.add(found.group(1))
        await backend.open()
        ids = [new_job_id() for _ in range(8)]
        await backend.enqueue(
            [NewJob(id=i, task="metrics_app:ok", args=[n]) for n, i in enumerate(ids)]
        )

        async def all_succeeded() -> bool:
            jobs = [await backend.get(i) for i in ids]
            return all(j is not None and j.status is JobStatus.SUCCEEDED for j in jobs)

        await eventually(all_succeeded, timeout=30)
        totals: list[float] = []
        for base in sorted(bases):
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                text = (await client.get("/metrics")).text
            totals.append(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == "afterwork_jobs_total"
                    and sample.labels["outcome"] == "succeeded"
                )
            )
        assert sum(totals) == 8.0  # each process counts its own; summed, every job once
    finally:
        await backend.aclose()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
    assert process.returncode == 0


async def test_a_worker_process_flushes_its_history_when_it_stops(tmp_path: Path) -> None:
    app = APP + "\nfrom afterwork.history import History\n\nHistory(aw, flush_interval=3600.0)\n"
    (tmp_path / "history_app.py").write_text(app)
    url = f"sqlite:///{tmp_path / 'afterwork.db'}"
    env = {**os.environ, "AFTERWORK_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path)])
    backend = SQLiteBackend(str(tmp_path / "afterwork.db"))
    await backend.open()
    ids = [new_job_id() for _ in range(3)]
    await backend.enqueue([NewJob(id=i, task="history_app:ok", args=[1]) for i in ids])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "afterwork", "worker", "history_app:aw", cwd=tmp_path, env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def all_succeeded() -> bool:
            jobs = [await backend.get(i) for i in ids]
            return all(j is not None and j.status is JobStatus.SUCCEEDED for j in jobs)

        await eventually(all_succeeded, timeout=30)
        assert await backend.read_history(since=0, until=backend.now() + 60) == []  # not yet
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
    try:
        assert process.returncode == 0
        rows = await backend.read_history(since=0, until=backend.now() + 60)
        assert {r.task for r in rows} == {"history_app:ok"}  # one minute, or two if it ticked
        assert sum(r.succeeded for r in rows) == 3
    finally:
        await backend.aclose()
