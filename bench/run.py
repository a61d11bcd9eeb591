"""Run every benchmark side by side and print figures and ratios.

    pip install -e '.[bench]' && python bench/run.py [--runs 30]

Each workload runs in its own process so engines do not share state or warm caches.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def synced_commit_ms(samples: int = 2000) -> float:
    """The floor: one synced SQLite WAL commit of one small row on this disk."""
    conn = sqlite3.connect(f"{tempfile.mkdtemp()}/floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    times = []
    for i in range(samples):
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (str(i), "x"))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def child(script: str, *args: str) -> dict[str, Any] | None:
    result = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                            text=True, timeout=1800)
    if result.returncode != 0:
        print(f"  {script} failed: {result.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30, help="100-step runs per engine")
    parser.add_argument("--requests", type=int, default=300, help="batches of 100 events")
    parser.add_argument("--postgres", action="store_true",
                        help="also run bench/postgres_scale.py (1, 2, 4 workers; wake-up latency)")
    options = parser.parse_args()

    floor = synced_commit_ms()
    print(f"synced SQLite WAL commit (floor): {floor:.3f} ms")

    print(f"\nper-step overhead, 100 no-op steps per run, {options.runs} runs, SQLite:")
    ours = child("steps_stepwise.py", str(options.runs))
    dbos = child("steps_dbos.py", str(options.runs))
    if ours:
        print(f"  stepwise  median {ours['per_step_ms_median']:.3f} ms  "
              f"p90 {ours['per_step_ms_p90']:.3f} ms  ({ours['runs_per_s']:.1f} runs/s)  "
              f"= {ours['per_step_ms_median'] / floor:.2f}x the floor")
    if dbos:
        print(f"  DBOS      median {dbos['per_step_ms_median']:.3f} ms  "
              f"p90 {dbos['per_step_ms_p90']:.3f} ms  ({dbos['runs_per_s']:.1f} runs/s)")
    if ours and dbos:
        print(f"  stepwise is {dbos['per_step_ms_median'] / ours['per_step_ms_median']:.1f}x "
              "faster per step than DBOS")

    print(f"\nPOST /api/v1/events, batches of 100, {options.requests} requests, 8 concurrent:")
    events = child("events_http.py", str(options.requests), "8")
    if events:
        print(f"  stepwise server (SQLite): {events['events_per_s']:.0f} events/s, each "
              "starting one run")
    if options.postgres:
        print()
        subprocess.run([sys.executable, str(HERE / "postgres_scale.py")], check=False)


if __name__ == "__main__":
    main()
