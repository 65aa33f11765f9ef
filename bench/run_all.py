"""afterwork and its peers on Redis, side by side in one run (issue 4, docs/benchmarks.md).

    python bench/run_all.py [--runs 3] [--only afterwork,Taskiq] [--suite redis|costs|distance]
    python bench/run_all.py --suite drain      # drain and latency only, every system
    python bench/run_all.py --suite costs      # round trips, commands and CPU per job
    python bench/run_all.py --suite distance   # drain and latency over a 2 ms round trip
    python bench/run_all.py --suite fleet      # bench/fleet_bench.py: 1-8 worker processes

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
import os
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

from bench.envs import afterwork_python  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PEERS = {  # name: (module, environment)
    "Taskiq": ("taskiq", ".venv"),
    "SAQ": ("saq", ".venv-saq"),
    "Dramatiq": ("dramatiq", ".venv"),
    "streaq": ("streaq", ".venv"),
    "ARQ": ("arq", ".venv-arq"),
    "RQ": ("rq", ".venv"),
    "Celery": ("celery", ".venv"),
    "bare list": ("barelist", ""),  # the project's environment (redis-py)
}
SYSTEMS = ["afterwork", *PEERS]
ROWS = [  # key, label, higher is better
    ("enqueue_single_per_s", "(a) enqueue 10,000 no-ops one at a time, jobs/s", True),
    ("enqueue_c32_per_s", "(a) enqueue 10,000 no-ops from 32 concurrent callers, jobs/s", True),
    ("enqueue_batch_per_s", "(a) enqueue 10,000 no-ops in batches of 1,000, jobs/s", True),
    ("drain_per_s", "(b) drain 10,000 pre-enqueued no-ops, jobs/s", True),
    ("sleep_cdefault_s", "(c) 1,000 × sleep(0.05), default concurrency, s", False),
    ("sleep_c100_s", "(c) 1,000 × sleep(0.05), concurrency 100, s (ideal 0.5)", False),
    ("latency_p50_ms", "(d) enqueue-to-start latency p50, ms", False),
    ("latency_p99_ms", "(d) enqueue-to-start latency p99, ms", False),
]
COST_ROWS = [
    ("round_trips_per_job", "worker round trips to Redis per drained job", False),
    ("commands_per_job", "worker Redis commands per drained job", False),
    ("cpu_us_per_job", "worker CPU per drained job, µs (process tree, /proc)", False),
    ("bytes_per_job", "bytes on the worker's connections per job", False),
    ("cores_while_draining", "cores the worker used while draining", False),
    ("proxied_drain_per_s", "drain through the counting proxy, jobs/s", True),
    ("startup_cpu_s", "worker CPU until its first job was seen done, s", False),
]
DISTANCE_ROWS = [
    ("drain_per_s", "(b) drain no-ops, worker 2 ms RTT from Redis, jobs/s", True),
    ("latency_p50_ms", "(d) enqueue-to-start latency p50, ms", False),
    ("latency_p99_ms", "(d) enqueue-to-start latency p99, ms", False),
]
DRAIN_ROWS = [
    ("drain_per_s", "(b) drain pre-enqueued no-ops, jobs/s", True),
    ("latency_p50_ms", "(d) enqueue-to-start latency p50, ms", False),
    ("latency_p99_ms", "(d) enqueue-to-start latency p99, ms", False),
]
SUITE_ROWS = {"redis": ROWS, "costs": COST_ROWS, "distance": DISTANCE_ROWS, "drain": DRAIN_ROWS}


def command(system: str, url: str, out: Path, suite: str = "redis") -> list[str]:
    if system == "afterwork" and suite == "redis":
        script = ROOT / "bench" / "redis_bench.py"
        # The driver needs the project's environment (tests/); its worker runs from
        # afterwork_python() (redis_bench.start_worker).
        return [sys.executable, str(script), "--runs", "1", "--url", url, "--json", str(out)]
    module, env = PEERS.get(system, ("afterwork", ""))
    if env:
        python = str(ROOT / "bench" / env / "bin" / "python")
    else:
        python = afterwork_python() if system == "afterwork" else sys.executable
    base = [python, "-m", f"bench.peers.{module}_bench", url, "--json", str(out)]
    if suite == "costs":
        return [*base, "--scenarios", "costs"]
    if suite in ("distance", "drain"):
        return [*base, "--scenarios", "drain,latency"]
    return base


def start_delay(url: str, delay_ms: float) -> tuple[subprocess.Popen[str], str, str]:
    """A ``bench/proxy.py`` adding ``delay_ms`` each way: (process, its URL, measured RTT)."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "proxy.py"), "--target-port", port,
         "--delay-ms", str(delay_ms), "--probe"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proxy.stdout is not None
    mine = proxy.stdout.readline().split()[1]
    rtt = proxy.stdout.readline().strip()
    return proxy, f"redis://127.0.0.1:{mine}/0", rtt


def afterwork_version() -> str:
    where = "bench/.venv" if afterwork_python() != sys.executable else "the project's environment"
    return (
        f"{version('afterwork')} (redis-py {version('redis')}, hiredis {version('hiredis')};"
        f" run from {where})"
    )


def run_once(
    system: str, folder: Path, timeout: float, suite: str = "redis", delay_ms: float = 1.0
) -> dict[str, Any]:
    server = RedisServer(folder / "redis")
    server.extra = ["--appendonly", "no"]
    server.start()
    out = folder / "result.json"
    started = time.monotonic()
    argv = command(system, server.url, out, suite)
    proxy, rtt = None, ""
    if suite == "distance":
        proxy, proxied, rtt = start_delay(server.url, delay_ms)
        argv += ["--worker-url", proxied]
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        server.stop()
    if done.returncode != 0 or not out.exists():
        return {"error": done.stderr.strip().splitlines()[-1:] or f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(out.read_text())
    if system == "afterwork" and suite == "redis":
        result = {**result["runs"][0], "version": afterwork_version(), "notes": []}
    if rtt:
        result["notes"] = [*result.get("notes", []), rtt]
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


REFERENCE = "bare list"  # not a peer: no guarantees


def targets(systems: dict[str, Any], suite: str = "redis") -> list[tuple[str, str, bool | None]]:
    """Issues 4 and 18's targets against the fastest peer measured in this run."""
    aw = systems.get("afterwork", {}).get("median", {})

    def best(key: str, high: bool) -> tuple[float | None, str]:
        named = [
            (float(s["median"][key]), name)
            for name, s in systems.items()
            if name not in ("afterwork", REFERENCE) and s.get("median", {}).get(key) is not None
        ]
        if not named:
            return None, "-"
        return (max if high else min)(named)

    out: list[tuple[str, str, bool | None]] = []

    def reference(out: list[tuple[str, str, bool | None]]) -> None:
        bare = systems.get(REFERENCE, {}).get("median", {}).get("drain_per_s")
        mine = aw.get("drain_per_s")
        out.append(
            (
                "drain ≥ 15 % of the bare list's steady rate (issue 18)",
                "not measured"
                if bare is None or mine is None
                else f"{fmt(mine, 'drain_per_s')} vs {fmt(0.15 * bare, 'drain_per_s')}"
                f" (bare list {fmt(bare, 'drain_per_s')}: {mine / bare:.1%})",
                None if bare is None or mine is None else mine >= 0.15 * bare,
            )
        )

    def check(label: str, key: str, high: bool, factor: float, strict: bool = False) -> None:
        peer, name = best(key, high)
        mine = aw.get(key)
        if peer is None or mine is None:
            out.append((label, "not measured", None))
            return
        goal = peer * factor
        met = (mine > goal if strict else mine >= goal) if high else mine <= goal
        out.append((label, f"{fmt(mine, key)} vs {fmt(goal, key)} ({name} {fmt(peer, key)})", met))

    if suite == "costs":
        trips = aw.get("round_trips_per_job")
        out.append(
            (
                "round trips per drained job ≤ 0.3 (issue 18)",
                "not measured" if trips is None else f"{trips:.3f} vs 0.3",
                None if trips is None else trips <= 0.3,
            )
        )
        check("the lowest worker CPU per job of all peers", "cpu_us_per_job", False, 1)
        return out
    if suite in ("distance", "drain"):
        if suite == "drain":
            check("drain ≥ 3× the fastest peer", "drain_per_s", True, 3)
            reference(out)
            check("latency p50 no worse than the fastest peer", "latency_p50_ms", False, 1)
            check("latency p99 no worse than the fastest peer", "latency_p99_ms", False, 1)
            return out
        check("drain at 2 ms RTT ≥ 5× the fastest peer (issue 18)", "drain_per_s", True, 5)
        check("latency p50 no worse than the fastest peer", "latency_p50_ms", False, 1)
        check("latency p99 no worse than the fastest peer", "latency_p99_ms", False, 1)
        return out
    check("single enqueue faster than every peer", "enqueue_single_per_s", True, 1, strict=True)
    check("batch enqueue ≥ 2× the fastest peer", "enqueue_batch_per_s", True, 2)
    check("drain ≥ 3× the fastest peer", "drain_per_s", True, 3)
    reference(out)
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


def markdown(report: dict[str, Any], suite: str = "redis") -> str:
    systems: dict[str, Any] = report["systems"]
    names = [name for name in SYSTEMS if name in systems]
    lines = [
        "| scenario | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label, _ in SUITE_ROWS[suite]:
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
    lines += ["", "| target, this run | afterwork vs goal | met |", "|---|---|---|"]
    for label, detail, met in targets(systems, suite):
        lines.append(f"| {label} | {detail} | {'-' if met is None else 'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated systems to (re-)run, e.g. afterwork")
    parser.add_argument("--json", type=Path, default=None, help="redis-<suite>.json")
    parser.add_argument("--timeout", type=float, default=1800, help="per system and run, s")
    parser.add_argument(
        "--suite", choices=["redis", "drain", "costs", "distance", "fleet"], default="redis"
    )
    parser.add_argument("--delay-ms", type=float, default=1.0, help="distance: each way, ms")
    parser.add_argument("--fleet-args", default="", help="passed to bench/fleet_bench.py")
    args = parser.parse_args()
    if args.suite == "fleet":
        script = ROOT / "bench" / "fleet_bench.py"
        raise SystemExit(subprocess.call([sys.executable, str(script), *args.fleet_args.split()]))
    suite = args.suite
    if args.json is None:
        args.json = RESULTS / f"redis-{'all' if suite == 'redis' else suite}.json"
    chosen = args.only.split(",") if args.only else SYSTEMS
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    missing = [name for name in chosen if not Path(command(name, "", Path(), suite)[0]).exists()]
    if missing:  # a peer whose environment was never made (bench/README.md says how)
        print(f"skipped, no environment: {', '.join(missing)} (see bench/README.md)")
        chosen = [name for name in chosen if name not in missing]
    report: dict[str, Any] = {"systems": {}}
    if args.only and args.json.exists():
        report = json.loads(args.json.read_text())
    report["machine"] = f"{platform.python_version()} on {platform.platform()}"
    report["load_before"] = os.getloadavg()
    for name in chosen:
        report["systems"][name] = {"runs": []}
    for index in range(args.runs):  # interleaved: run i of every system, then run i + 1
        for name in chosen:
            with tempfile.TemporaryDirectory(prefix="aw-bench-all-") as folder:
                result = run_once(name, Path(folder), args.timeout, suite, args.delay_ms)
            report["systems"][name]["runs"].append(result)
            shown = {k: round(v, 2) for k, v in result.items() if isinstance(v, float)}
            print(f"run {index + 1} {name}: {result.get('error') or shown}", flush=True)
    for name in chosen:
        runs = report["systems"][name]["runs"]
        rows = SUITE_ROWS[suite]
        report["systems"][name]["median"] = {key: median(runs, key) for key, _, _ in rows}
    report["load_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    table = markdown(report, suite)
    table += f"\nload average before {report['load_before']}, after {report['load_after']}\n"
    args.json.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
