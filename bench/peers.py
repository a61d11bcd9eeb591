"""stepwise next to Celery, Procrastinate and DBOS, side by side on this machine: one command.

    python bench/peers.py [--repeat 3] [--quick]

It makes its own environment (`bench/.venv-peers`, from `bench/peers/requirements.txt`, with
stepwise installed editable), then runs every workload for every system, alternating systems
within each repetition, and prints the medians with stepwise-on-PostgreSQL/peer ratios and the
versions; the figures go to `bench/results/peers-<time>.json`. Redis and PostgreSQL must be
running (BENCH_REDIS, BENCH_POSTGRES; defaults 127.0.0.1). Same settings for everyone: one
worker process with concurrency 8, a warm-up of 200 jobs left out, each system as durable as it
can be (the table says which are not).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
VENV = HERE / ".venv-peers"
PY = VENV / "bin" / "python"

#: (workload, size, quick size, figure, unit, higher is better)
WORKLOADS = [
    ("jobs", 5000, 1000, "jobs_per_s", "1-step jobs/s", True),
    ("steps", 300, 100, "per_step_ms", "per-step ms, 10-step workflows", False),
    ("latency", 300, 100, "first_execution_p50_ms", "enqueue -> first execution p50 ms", False),
    ("sleepers", 10000, 2000, "sleeping_worker_rss_mb", "worker MiB, N sleeping runs", False),
    ("sleepers", 10000, 2000, "wake_all_s", "s to wake them all after due", False),
    ("ingest", 100000, 20000, "ingest_events_per_s", "events/s ingested, batches of 100", True),
]
#: system -> (script, extra args, workloads it has)
SYSTEMS: dict[str, tuple[str, list[str], set[str]]] = {
    "stepwise PG": ("stepwise_load.py", [], {"jobs", "steps", "latency", "sleepers", "ingest"}),
    "stepwise SQLite": ("stepwise_load.py", ["--sqlite"],
                        {"jobs", "steps", "latency", "sleepers", "ingest"}),
    "Celery prefork": ("celery_load.py", ["--pool", "prefork"], {"jobs", "latency", "sleepers"}),
    "Celery threads": ("celery_load.py", ["--pool", "threads"], {"jobs", "latency"}),
    "Procrastinate": ("procrastinate_load.py", [], {"jobs", "latency", "sleepers"}),
    "DBOS": ("dbos_load.py", [], {"jobs", "steps", "latency", "sleepers"}),
}
DURABILITY = {
    "stepwise PG": "durable: events, runs and every step result committed",
    "stepwise SQLite": "durable: the same, fsync per group commit",
    "Celery prefork": "NOT durable: Redis here keeps nothing on disk; no step results",
    "Celery threads": "NOT durable: as above",
    "Procrastinate": "durable jobs, no step results",
    "DBOS": "durable: workflows and every step result",
}


def environment() -> None:
    if not PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(HERE / "peers" / "requirements.txt"), "-e", f"{ROOT}[postgres]"],
                   check=True)


def versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['stepwise-engine', 'celery', 'redis', 'procrastinate', 'dbos', 'psycopg']}))")
    found = json.loads(subprocess.run([str(PY), "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    pg = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-tAc",
                         "SHOW server_version"], capture_output=True, text=True).stdout.strip()
    redis = subprocess.run(["redis-cli", "INFO", "server"], capture_output=True,
                           text=True).stdout
    found["postgresql"] = pg or "?"
    found["redis-server"] = next((line.split(":")[1].strip() for line in redis.splitlines()
                                  if line.startswith("redis_version:")), "?")
    found["python"] = platform.python_version()
    return found


def one(system: str, workload: str, size: int) -> dict[str, Any] | None:
    script, extra, _ = SYSTEMS[system]
    began = time.monotonic()
    result = subprocess.run([str(PY), str(HERE / "peers" / script), workload, str(size),
                             *extra], capture_output=True, text=True, timeout=1800,
                            cwd=HERE / "peers")
    if result.returncode != 0:
        print(f"    {system} {workload}: failed: "
              f"{(result.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        return None
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"    {system:<16} {workload:<9} {json.dumps(figures)} "
          f"({time.monotonic() - began:.0f} s)", flush=True)
    return figures  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default=None, help="comma-separated workloads")
    parser.add_argument("--systems", default=None, help="comma-separated systems")
    options = parser.parse_args()
    environment()
    systems = [s for s in SYSTEMS if options.systems is None or s in options.systems.split(",")]
    workloads = sorted({w[0] for w in WORKLOADS
                        if options.only is None or w[0] in options.only.split(",")},
                       key=[w[0] for w in WORKLOADS].index)
    sizes = {w[0]: (w[2] if options.quick else w[1]) for w in WORKLOADS}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in systems}
    for repetition in range(options.repeat):
        print(f"repetition {repetition + 1} of {options.repeat}", flush=True)
        for workload in workloads:
            order = systems if repetition % 2 == 0 else list(reversed(systems))
            for system in order:
                if workload in SYSTEMS[system][2]:
                    got = one(system, workload, sizes[workload])
                    if got is not None:
                        raw[system].setdefault(workload, []).append(got)
    table: dict[str, dict[str, float]] = {s: {} for s in systems}
    for system in systems:
        for workload, _, _, figure, _, _ in WORKLOADS:
            values = [r[figure] for r in raw[system].get(workload, []) if figure in r]
            if values:
                table[system][figure] = statistics.median(values)
    print_table(table, systems, sizes)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"peers-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"versions": versions(), "sizes": sizes,
                                "repeat": options.repeat, "machine": machine(),
                                "medians": table, "runs": raw}, indent=1))
    print(f"\nwritten {path.relative_to(ROOT)}")


def machine() -> str:
    import os

    cpu = next((line.split(":")[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def print_table(table: dict[str, dict[str, float]], systems: list[str],
                sizes: dict[str, int]) -> None:
    print(f"\nmedians; machine: {machine()}; versions: {json.dumps(versions())}")
    header = ["workload", *systems]
    rows = []
    base = table.get("stepwise PG", {})
    for workload, _, _, figure, label, higher in WORKLOADS:
        row = [label.replace("N", str(sizes[workload]))]
        for system in systems:
            value = table[system].get(figure)
            if value is None:
                row.append("n/a")
                continue
            cell = f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
            if system != "stepwise PG" and figure in base and value:
                ratio = base[figure] / value if higher else value / base[figure]
                cell += f" (PG {ratio:.2f}x)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\n(PG Nx: how many times better stepwise on PostgreSQL does than that column)")
    for system in systems:
        print(f"  {system}: {DURABILITY[system]}")


if __name__ == "__main__":
    main()
