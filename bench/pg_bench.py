"""afterwork, PgQueuer and Procrastinate on ONE private PostgreSQL in the same run (issue 12).

    python bench/pg_bench.py [--runs 3] [--only afterwork,PgQueuer] [--scale 1]
                             [--scenarios enqueue,drain,sleep,latency] [--base OTHER/src]

Starts one private ``postgres`` (tests/pg_server.py, initdb in a temporary directory) with
PostgreSQL's durable defaults (fsync, synchronous_commit and full_page_writes on). Each run,
every system in turn (interleaved: run i of every system, then run i + 1) gets a fresh
database on that server and runs ``bench/peers/pg_<system>.py`` in the peers' environment
``bench/.venv-pg`` (``python3 -m venv bench/.venv-pg && bench/.venv-pg/bin/pip install
pgqueuer procrastinate psycopg[binary] asyncpg -e .[postgres]``). Scenarios in
bench/peers/pg_common.py (``--scenarios enqueue`` runs only (a); the others' rows then read
n/a; ``--scenarios batch`` runs only (a)'s batches). ``--scale 10`` divides the job counts
(a quick check). ``--base OTHER/src`` adds afterwork from another source tree (``afterwork
(base)``, in the same interleaving: before and after a change). Writes every
run and the medians to ``bench/results/pg-all.json`` and a table to ``bench/results/pg-all.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg_server import PostgresServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYTHON = ROOT / "bench" / ".venv-pg" / "bin" / "python"
SYSTEMS = {
    "afterwork": "pg_afterwork",
    "PgQueuer": "pg_pgqueuer",
    "Procrastinate": "pg_procrastinate",
}
ROWS = [  # key, label, higher is better
    ("enqueue_single_per_s", "(a) enqueue one at a time, jobs/s", True),
    ("enqueue_c32_per_s", "(a) enqueue one at a time from 32 concurrent callers, jobs/s", True),
    ("enqueue_batch_per_s", "(a) enqueue in batches of 1,000, jobs/s", True),
    ("enqueue_single_client_cpu_us", "(a) one at a time: client CPU per job, µs", False),
    ("enqueue_single_server_cpu_us", "(a) one at a time: server CPU per job, µs", False),
    ("enqueue_c32_client_cpu_us", "(a) 32 callers: client CPU per job, µs", False),
    ("enqueue_c32_server_cpu_us", "(a) 32 callers: server CPU per job, µs", False),
    ("enqueue_batch_client_cpu_us", "(a) batches: client CPU per job, µs", False),
    ("enqueue_batch_server_cpu_us", "(a) batches: server CPU per job, µs", False),
    ("drain_per_s", "(b) drain no-ops, one worker process, jobs/s (first start to last end)", True),
    ("drain_wall_per_s", "(b) the same, including the worker's start-up, jobs/s", True),
    ("sleep_c100_s", "(c) sleep(0.05) jobs at concurrency 100, s", False),
    ("latency_p50_ms", "(d) enqueue-to-start latency at 200 jobs/s, p50, ms", False),
    ("latency_p99_ms", "(d) enqueue-to-start latency at 200 jobs/s, p99, ms", False),
]
TARGETS = [  # label, key, higher is better, factor
    ("drain ≥ 1.5× the fastest peer", "drain_per_s", True, 1.5),
    ("batch enqueue ≥ 1.2× the fastest peer", "enqueue_batch_per_s", True, 1.2),
    ("one-at-a-time enqueue ≥ 1× the fastest peer", "enqueue_single_per_s", True, 1.0),
    ("32 concurrent callers ≥ 1× the fastest peer", "enqueue_c32_per_s", True, 1.0),
    ("latency p50 no worse than the best peer", "latency_p50_ms", False, 1.0),
    ("latency p99 no worse than the best peer", "latency_p99_ms", False, 1.0),
]


async def create_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


BASE = "afterwork (base)"


def run_once(
    server: PostgresServer,
    system: str,
    index: int,
    scale: int,
    scenarios: str,
    base: Path | None = None,
) -> dict[str, Any]:
    database = "bench_" + "".join(c if c.isalnum() else "_" for c in system.lower()) + f"_{index}"
    asyncio.run(create_database(server.url, database))
    url = f"postgresql://postgres@127.0.0.1:{server.port}/{database}"
    with tempfile.TemporaryDirectory(prefix="aw-pgbench-") as folder:
        out = Path(folder) / "result.json"
        started = time.monotonic()
        module = SYSTEMS["afterwork" if system == BASE else system]
        command = [str(PYTHON), "-m", f"bench.peers.{module}", url, "--json", str(out)]
        src = base if system == BASE and base is not None else ROOT / "src"
        env = {
            **os.environ,
            # this checkout's afterwork, whichever the environment's editable install is
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(src)]),
            "BENCH_SCALE": str(scale),
            "BENCH_SCENARIOS": scenarios,
        }
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
            )
        except subprocess.TimeoutExpired:
            return {"error": "timed out after 900 s"}
        if done.returncode != 0 or not out.exists():
            return {"error": done.stderr.strip().splitlines()[-1:] or f"exit {done.returncode}"}
        result: dict[str, Any] = json.loads(out.read_text())
    result["wall_s"] = time.monotonic() - started
    return result


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    present = [float(r[key]) for r in runs if "error" not in r and r.get(key) is not None]
    return float(statistics.median(present)) if present else None


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if key.endswith(("_per_s", "_us")) else f"{value:.2f}"


def targets(systems: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 12's targets against the best peer of this run."""
    mine: dict[str, Any] = systems.get("afterwork", {}).get("median", {})
    out: list[tuple[str, str, bool | None]] = []
    for label, key, high, factor in TARGETS:
        named = [
            (float(s["median"][key]), name)
            for name, s in systems.items()
            if name not in ("afterwork", BASE) and s.get("median", {}).get(key) is not None
        ]
        value = mine.get(key)
        if not named or value is None:
            out.append((label, "not measured", None))
            continue
        peer, name = (max if high else min)(named)
        goal = peer * factor
        met = value >= goal if high else value <= goal
        detail = f"{fmt(value, key)} vs {fmt(goal, key)} ({name} {fmt(peer, key)})"
        out.append((label, detail, met))
    return out


def markdown(report: dict[str, Any]) -> str:
    systems: dict[str, Any] = report["systems"]
    names = list(systems)
    lines = ["| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label, _ in ROWS:
        cells = [fmt(systems[name].get("median", {}).get(key), key) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    runs = [str(len([r for r in systems[n]["runs"] if "error" not in r])) for n in names]
    lines.append("| runs (median of) | " + " | ".join(runs) + " |")
    lines += ["", "| system | version | notes |", "|---|---|---|"]
    for name in names:
        good = [r for r in systems[name]["runs"] if "error" not in r]
        errors = [str(r["error"]) for r in systems[name]["runs"] if "error" in r]
        notes = "; ".join([*(good[0]["notes"] if good else []), *errors])
        lines.append(f"| {name} | {good[0]['version'] if good else '?'} | {notes} |")
    lines += ["", "| target (issue 12), this run | afterwork vs goal | met |", "|---|---|---|"]
    for label, detail, met in targets(systems):
        lines.append(f"| {label} | {detail} | {'-' if met is None else 'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated systems, e.g. afterwork,PgQueuer")
    parser.add_argument("--scale", type=int, default=1, help="divide the job counts by this")
    parser.add_argument(
        "--scenarios",
        default="enqueue,drain,sleep,latency",
        help="comma-separated, of enqueue (a), drain (b), sleep (c), latency (d); a letter will"
        " do; batch: the batches of (a) alone",
    )
    parser.add_argument("--base", type=Path, help="also afterwork from this src (before/after)")
    parser.add_argument("--json", type=Path, default=RESULTS / "pg-all.json")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SYSTEMS)
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {list(SYSTEMS)}")
    if args.base is not None:
        chosen.insert(0, BASE)
    report: dict[str, Any] = {
        "machine": f"{platform.python_version()} on {platform.platform()}",
        "load_before": os.getloadavg(),
        "scale": args.scale,
        "scenarios": args.scenarios,
        "systems": {name: {"runs": []} for name in chosen},
    }
    server = PostgresServer(durable=True)
    server.start()
    try:
        report["postgres"] = server_version(server)
        for index in range(args.runs):  # interleaved: run i of every system, then run i + 1
            for name in chosen:
                result = run_once(server, name, index, args.scale, args.scenarios, args.base)
                report["systems"][name]["runs"].append(result)
                shown = {k: round(v, 2) for k, v in result.items() if isinstance(v, float)}
                print(f"run {index + 1} {name}: {result.get('error') or shown}", flush=True)
    finally:
        server.remove()
    report["load_after"] = os.getloadavg()
    for name in chosen:
        runs = report["systems"][name]["runs"]
        report["systems"][name]["median"] = {key: median(runs, key) for key, _, _ in ROWS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    table = markdown(report)
    args.json.with_suffix(".md").write_text(table)
    print(table)


def server_version(server: PostgresServer) -> str:
    async def fetch() -> str:
        import asyncpg

        conn = await asyncpg.connect(server.url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(fetch())


if __name__ == "__main__":
    main()
