"""Procrastinate 3 (PostgreSQL) under the peers' workloads: one worker process, concurrency 8,
LISTEN/NOTIFY on. It stores each job durably, not steps.

    python bench/peers/procrastinate_load.py jobs|latency|sleepers N
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    CONCURRENCY,
    PYTHON,
    WARMUP,
    Schema,
    p50,
    report,
    rss_mb,
    sleep_lead,
    spawn,
    stop,
)

APP = textwrap.dedent('''
    import os
    import time

    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_DB"]))

    @app.task(name="job", pass_context=True)
    async def job(context, key):
        async with app.connector.pool.connection() as conn:  # where it ran, for the bench
            await conn.execute("INSERT INTO bench_ran (key, at) VALUES (%s, %s)",
                               (key, time.time()))
''')


async def run(kind: str, n: int, url: str, tmp: str) -> dict[str, Any]:
    import os

    os.environ["BENCH_DB"] = url
    sys.path.insert(0, tmp)
    import peer_procrastinate

    app = peer_procrastinate.app
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        async with app.connector.pool.connection() as conn:
            await conn.execute("CREATE TABLE bench_ran (key TEXT PRIMARY KEY, at DOUBLE "
                               "PRECISION)")
        worker = spawn([PYTHON, "-m", "procrastinate", "--app", "peer_procrastinate.app",
                        "--log-level", "warning", "worker", "--concurrency", str(CONCURRENCY)],
                       tmp, {"PYTHONPATH": tmp, "BENCH_DB": url})
        try:
            async def done() -> int:
                async with app.connector.pool.connection() as conn:
                    row = await (await conn.execute("SELECT count(*) FROM bench_ran")).fetchone()
                    return int(row[0])

            async def until(count: int, timeout: float = 600) -> None:
                deadline = time.monotonic() + timeout
                while await done() < count:
                    if time.monotonic() > deadline:
                        raise TimeoutError("procrastinate did not finish")
                    await asyncio.sleep(0.05)

            job = peer_procrastinate.job
            await job.batch_defer_async(*({"key": f"w{i}"} for i in range(WARMUP)))
            await until(WARMUP, 120)
            if kind == "jobs":
                began = time.perf_counter()
                for start in range(0, n, 100):  # batches of 100, as the others
                    await job.batch_defer_async(*({"key": f"j{i}"} for i in
                                                  range(start, min(n, start + 100))))
                await until(WARMUP + n)
                return {"jobs_per_s": n / (time.perf_counter() - began)}
            if kind == "latency":
                sent = {}
                for i in range(n):
                    at = time.time()
                    await job.defer_async(key=f"l{i}")
                    sent[f"l{i}"] = at
                    await asyncio.sleep(max(0.0, at + 0.02 - time.time()))
                await until(WARMUP + n)
                async with app.connector.pool.connection() as conn:
                    rows = await (await conn.execute("SELECT key, at FROM bench_ran")).fetchall()
                ran = {k: float(a) for k, a in rows}
                return {"first_execution_p50_ms": p50([(ran[k] - at) * 1000
                                                       for k, at in sent.items()])}
            wake = time.time() + sleep_lead(n)
            from datetime import UTC, datetime

            when = datetime.fromtimestamp(wake, UTC)
            for start in range(0, n, 100):
                await job.configure(schedule_at=when).batch_defer_async(
                    *({"key": f"s{i}"} for i in range(start, min(n, start + 100))))
            await asyncio.sleep(max(0.0, wake - time.time() - 3))
            memory = rss_mb(worker.pid)
            await until(WARMUP + n)
            async with app.connector.pool.connection() as conn:
                row = await (await conn.execute(
                    "SELECT max(at) FROM bench_ran WHERE key LIKE 's%'")).fetchone()
            return {"sleeping_worker_rss_mb": memory, "wake_all_s": float(row[0]) - wake}
        finally:
            stop(worker)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["jobs", "latency", "sleepers"])
    parser.add_argument("n", type=int)
    options = parser.parse_args()
    tmp = tempfile.mkdtemp()
    Path(tmp, "peer_procrastinate.py").write_text(APP)
    with Schema() as schema:
        report(asyncio.run(run(options.workload, options.n, schema.url, tmp)))


if __name__ == "__main__":
    main()
