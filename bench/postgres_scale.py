"""stepwise on PostgreSQL: runs/s and per-step overhead for 1, 2 and 4 worker processes, and the
latency from an event's acknowledgment to its first step starting (LISTEN/NOTIFY wake-up).

    python bench/postgres_scale.py     # STEPWISE_BENCH_POSTGRES=postgresql://... to point elsewhere

Each measurement uses a fresh schema, dropped afterwards. Prints figures and one JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg

BASE = os.environ.get("STEPWISE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
APP = textwrap.dedent('''
    import time
    import stepwise

    app = stepwise.App("pgbench")

    def noop(i):
        return i

    @app.function(id="five", trigger=stepwise.on_event("five"), retries=0)
    async def five(ctx):
        for i in range(5):
            await ctx.step.run(f"s{i}", noop, i)

    @app.function(id="hundred", trigger=stepwise.on_event("hundred"), retries=0)
    async def hundred(ctx):
        began = time.perf_counter()
        for i in range(100):
            await ctx.step.run(f"s{i}", noop, i)
        return (time.perf_counter() - began) * 1000 / 100

    @app.function(id="first", trigger=stepwise.on_event("first"), retries=0)
    async def first(ctx):
        return await ctx.step.run("at", time.time)
''')


class Schema:
    def __init__(self) -> None:
        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        sep = "&" if "?" in BASE else "?"
        self.url = f"{BASE}{sep}options={quote(f'-csearch_path={self.name}')}"

    def __enter__(self) -> Schema:
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")

    def scalar(self, sql: str) -> Any:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "stepwise.cli", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait(check: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(0.02)


def with_stack(workers: int, cwd: Path, body: Any) -> Any:
    with Schema() as schema:
        port = free_port()
        procs = [spawn(["server", "--db", schema.url, "--port", str(port), "--host",
                        "127.0.0.1", "--event-key", "bench"], cwd)]
        procs += [spawn(["worker", "app:app", "--db", schema.url, "--concurrency", "16"], cwd)
                  for _ in range(workers)]
        try:
            base = f"http://127.0.0.1:{port}"
            wait(lambda: _healthy(base) and schema.scalar(
                "SELECT count(*) FROM functions") == 3, 60)
            time.sleep(0.5)  # let every worker finish starting
            client = httpx.Client(base_url=base, headers={"authorization": "Bearer bench"},
                                  timeout=60)
            return body(schema, client)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def throughput(schema: Schema, client: httpx.Client, runs: int = 1000) -> dict[str, float]:
    began = time.perf_counter()
    for _ in range(0, runs, 100):
        client.post("/api/v1/events", json=[{"name": "five"}] * 100).raise_for_status()
    wait(lambda: schema.scalar("SELECT count(*) FROM runs WHERE status = 'completed'") == runs)
    elapsed = time.perf_counter() - began
    return {"runs_per_s": runs / elapsed, "steps_per_s": runs * 5 / elapsed}


def per_step(schema: Schema, client: httpx.Client, runs: int = 10) -> float:
    for done in range(1, runs + 1):  # one at a time: a step's latency, not the throughput
        client.post("/api/v1/events", json={"name": "hundred"}).raise_for_status()
        wait(lambda n=done: schema.scalar(  # type: ignore[misc]
            "SELECT count(*) FROM runs WHERE status = 'completed'") == n)
    with psycopg.connect(schema.url) as conn:
        values = [float(r[0]) for r in conn.execute("SELECT output FROM runs").fetchall()]
    return statistics.median(values)


def first_step_latency(schema: Schema, client: httpx.Client, events: int = 200
                       ) -> dict[str, float]:
    acked: dict[str, float] = {}
    for i in range(events):
        client.post("/api/v1/events", json={"name": "first", "id": f"f{i}"}).raise_for_status()
        acked[f"f{i}"] = time.time()
        time.sleep(0.01)
    wait(lambda: schema.scalar("SELECT count(*) FROM runs WHERE status = 'completed'")
         == events)
    with psycopg.connect(schema.url) as conn:
        rows = conn.execute("SELECT event_id, output FROM runs").fetchall()
    lags = sorted((float(out) - acked[eid]) * 1000 for eid, out in rows)
    return {"p50_ms": lags[len(lags) // 2], "p99_ms": lags[int(len(lags) * 0.99) - 1]}


def main() -> None:
    cwd = Path(tempfile.mkdtemp())
    (cwd / "app.py").write_text(APP)
    results: dict[str, Any] = {}
    print(f"PostgreSQL at {BASE.split('@')[-1]}; each worker process runs 16 runs at once")
    for workers in (1, 2, 4):
        figures = with_stack(workers, cwd, throughput)
        results[f"workers_{workers}"] = figures
        print(f"  {workers} worker process(es): {figures['runs_per_s']:.0f} runs/s "
              f"({figures['steps_per_s']:.0f} steps/s), 5-step runs")
    step_ms = with_stack(1, cwd, per_step)
    results["per_step_ms"] = step_ms
    print(f"  per-step overhead, 100-step run, one at a time: {step_ms:.3f} ms median")
    latency = with_stack(1, cwd, first_step_latency)
    results["ack_to_first_step"] = latency
    print(f"  event acknowledged -> first step started: p50 {latency['p50_ms']:.1f} ms, "
          f"p99 {latency['p99_ms']:.1f} ms (negative: the step began before the client read "
          "the answer)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
