"""afterwork and its peers on Redis, side by side in one run (issue 4, docs/benchmarks.md).

    python bench/run_all.py [--runs 3] [--only afterwork,Taskiq]

For each run, each system gets a fresh private redis-server (``--save "" --appendonly no``,
the settings of ``bench/redis_bench.py``) and runs the same scenarios in its own process:
afterwork through ``bench/redis_bench.py --runs 1``, each peer through
``bench/peers/<peer>_bench.py`` in the peers' environment (``bench/.venv``; ARQ and SAQ pin
older redis-py than taskiq-redis needs, so they have ``bench/.venv-arq`` and
``bench/.venv-saq``). Writes every run and the medians to ``bench/results/redis-all.json``
and a markdown table to ``bench/results/redis-all.md``. ``--only`` re-runs some systems
and keeps the others' results from the JSON file (``--only afterwork`` re-measures the
afterwork column alone).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PEERS = {  # name: (module, environment)
    "Taskiq": ("taskiq", ".venv"),
    "SAQ": ("saq", ".venv-saq"),
    "Dramatiq": ("dramatiq", ".venv"),
    "streaq": ("streaq", ".venv"),
    "ARQ": ("arq", ".venv-arq"),
    "RQ": ("rq", ".venv"),
    "Celery": ("celery", ".venv"),
}
SYSTEMS = ["afterwork", *PEERS]
ROWS = [  # key, label, higher is better
    ("enqueue_single_per_s", "(a) enqueue 10,000 no-ops one at a time, jobs/s", True),
    ("enqueue_batch_per_s", "(a) enqueue 10,000 no-ops in batches of 1,000, jobs/s", True),
    ("drain_per_s", "(b) drain 10,000 pre-enqueued no-ops, jobs/s", True),
    ("sleep_cdefault_s", "(c) 1,000 × sleep(0.05), default concurrency, s", False),
    ("sleep_c100_s", "(c) 1,000 × sleep(0.05), concurrency 100, s (ideal 0.5)", False),
    ("latency_p50_ms", "(d) enqueue-to-start latency p50, ms", False),
    ("latency_p99_ms", "(d) enqueue-to-start latency p99, ms", False),
]


def command(system: str, url: str, out: Path) -> list[str]:
    if system == "afterwork":
        script = ROOT / "bench" / "redis_bench.py"
        return [sys.executable, str(script), "--runs", "1", "--url", url, "--json", str(out)]
    module, env = PEERS[system]
    python = ROOT / "bench" / env / "bin" / "python"
    return [str(python), "-m", f"bench.peers.{module}_bench", url, "--json", str(out)]


def afterwork_version() -> str:
    return f"{version('afterwork')} (redis-py {version('redis')}, hiredis {version('hiredis')})"


def run_once(system: str, folder: Path, timeout: float) -> dict[str, Any]:
    server = RedisServer(folder / "redis")
    server.extra = ["--appendonly", "no"]
    server.start()
    out = folder / "result.json"
    started = time.monotonic()
    try:
        done = subprocess.run(
            command(system, server.url, out),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        server.stop()
    if done.returncode != 0 or not out.exists():
        return {"error": done.stderr.strip().splitlines()[-1:] or f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(out.read_text())
    if system == "afterwork":
        result = {**result["runs"][0], "version": afterwork_version(), "notes": []}
    result["wall_s"] = time.monotonic() - started
    return result


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values: list[float | None] = [run.get(key) for run in runs if "error" not in run]
    present = [value for value in values if value is not None]
    if not present or len(present) < len(values):
        return None
    return float(statistics.median(present))


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "n/a"
    if key.endswith("_per_s"):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def targets(systems: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 4's targets against the fastest peer measured in this run."""
    aw = systems.get("afterwork", {}).get("median", {})

    def best(key: str, high: bool) -> tuple[float | None, str]:
        named = [
            (float(s["median"][key]), name)
            for name, s in systems.items()
            if name != "afterwork" and s.get("median", {}).get(key) is not None
        ]
        if not named:
            return None, "-"
        return (max if high else min)(named)

    out: list[tuple[str, str, bool | None]] = []

    def check(label: str, key: str, high: bool, factor: float, strict: bool = False) -> None:
        peer, name = best(key, high)
        mine = aw.get(key)
        if peer is None or mine is None:
            out.append((label, "not measured", None))
            return
        goal = peer * factor
        met = (mine > goal if strict else mine >= goal) if high else mine <= goal
        out.append((label, f"{fmt(mine, key)} vs {fmt(goal, key)} ({name} {fmt(peer, key)})", met))

    check("single enqueue faster than every peer", "enqueue_single_per_s", True, 1, strict=True)
    check("batch enqueue ≥ 2× the fastest peer", "enqueue_batch_per_s", True, 2)
    check("drain ≥ 3× the fastest peer", "drain_per_s", True, 3)
    c100 = aw.get("sleep_c100_s")
    out.append(
        (
            "concurrency-100 sleeps within 10 % of the ideal 0.5 s",
            "not measured" if c100 is None else f"{c100:.2f} s vs 0.55 s",
            None if c100 is None else c100 <= 0.55,
        )
    )
    check("latency p50 no worse than the fastest peer", "latency_p50_ms", False, 1)
    check("latency p99 no worse than the fastest peer", "latency_p99_ms", False, 1)
    return out


def markdown(report: dict[str, Any]) -> str:
    systems: dict[str, Any] = report["systems"]
    names = [name for name in SYSTEMS if name in systems]
    lines = [
        "| scenario | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label, _ in ROWS:
        cells = [fmt(systems[name].get("median", {}).get(key), key) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    runs = [str(len([r for r in systems[name]["runs"] if "error" not in r])) for name in names]
    lines.append("| runs (median of) | " + " | ".join(runs) + " |")
    lines += ["", "| system | version | notes |", "|---|---|---|"]
    for name in names:
        good = [r for r in systems[name]["runs"] if "error" not in r]
        errors = [str(r["error"]) for r in systems[name]["runs"] if "error" in r]
        notes = "; ".join([*(good[0]["notes"] if good else []), *errors])
        lines.append(f"| {name} | {good[0]['version'] if good else '?'} | {notes} |")
    lines += ["", "| target (issue 4), this run | afterwork vs goal | met |", "|---|---|---|"]
    for label, detail, met in targets(systems):
        lines.append(f"| {label} | {detail} | {'-' if met is None else 'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated systems to (re-)run, e.g. afterwork")
    parser.add_argument("--json", type=Path, default=RESULTS / "redis-all.json")
    parser.add_argument("--timeout", type=float, default=1800, help="per system and run, s")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else SYSTEMS
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    report: dict[str, Any] = {"systems": {}}
    if args.only and args.json.exists():
        report = json.loads(args.json.read_text())
    report["machine"] = f"{platform.python_version()} on {platform.platform()}"
    for name in chosen:
        report["systems"][name] = {"runs": []}
    for index in range(args.runs):  # interleaved: run i of every system, then run i + 1
        for name in chosen:
            with tempfile.TemporaryDirectory(prefix="aw-bench-all-") as folder:
                result = run_once(name, Path(folder), args.timeout)
            report["systems"][name]["runs"].append(result)
            shown = {k: round(v, 2) for k, v in result.items() if isinstance(v, float)}
            print(f"run {index + 1} {name}: {result.get('error') or shown}", flush=True)
    for name in chosen:
        runs = report["systems"][name]["runs"]
        report["systems"][name]["median"] = {key: median(runs, key) for key, _, _ in ROWS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    table = markdown(report)
    args.json.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
