"""stepwise under the peers' workloads: one `stepwise worker` process with concurrency 8,
producers writing events straight to the database (as a Celery or Procrastinate producer
does), on PostgreSQL (or SQLite with --sqlite).

    python bench/peers/stepwise_load.py jobs|steps|latency|sleepers|ingest N [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
import uuid
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

from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.storage import Tx, open_storage

APP = textwrap.dedent('''
    import time
    from datetime import datetime, timezone

    import stepwise

    app = stepwise.App("peer")

    @app.function(id="job", trigger=stepwise.on_event("job"), retries=0)
    async def job(ctx):
        return await ctx.step.run("work", time.time)

    @app.function(id="flow", trigger=stepwise.on_event("flow"), retries=0)
    async def flow(ctx):
        for i in range(10):
            await ctx.step.run(f"s{i}", lambda i=i: i)
        return time.time()

    @app.function(id="sleeper", trigger=stepwise.on_event("sleeper"), retries=0)
    async def sleeper(ctx):
        await ctx.step.sleep_until("nap", datetime.fromtimestamp(ctx.event.data["until"],
                                                               timezone.utc))
        return await ctx.step.run("woke", time.time)
''')


class Stack:
    def __init__(self, url: str, tmp: str) -> None:
        self.url = url
        self.tmp = tmp
        # On SQLite the producer (this process) cannot wake a worker in another process: it
        # polls, every 10 ms here instead of its default 1 s.
        poll = ["--poll-seconds", "0.01"] if url.startswith("sqlite") else []
        self.worker = spawn([PYTHON, "-m", "stepwise.cli", "worker", "app:app", "--db", url,
                             "--concurrency", str(CONCURRENCY), *poll], tmp,
                            {"PYTHONPATH": tmp})
        self.engine: Engine | None = None

    async def open(self) -> None:
        storage = open_storage(self.url)
        await storage.open()
        self.engine = Engine(storage)
        deadline = time.monotonic() + 60
        while await self._count("functions", "") < 3:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not register its functions")
            await asyncio.sleep(0.05)

    async def _count(self, table: str, where: str) -> int:
        assert self.engine is not None
        sqlite = self.url.startswith("sqlite")

        def count(tx: Tx) -> int:
            if not sqlite:  # tables without statistics: read the index, not every run
                tx.raw_all("SELECT set_config('enable_seqscan', 'off', true)", {})
            return int(tx.raw_all(f"SELECT count(*) AS n FROM {table} {where}", {})[0]["n"])

        return await self.engine.storage.read(count)

    async def send(self, name: str, count: int, data: Any = None) -> list[str]:
        assert self.engine is not None
        ids = [f"{name}-{uuid.uuid4().hex}" for _ in range(count)]
        now = self.engine.clock.now_ms()
        payload = "{}" if data is None else __import__("json").dumps(data)
        await self.engine.ingest([StoredEvent(i, name, payload, now) for i in ids])
        return ids

    async def until_done(self, function: str, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while await self._count("runs", f"WHERE function_id = '{function}' AND status = "
                                            "'completed'") < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{function}: not done in time")
            await asyncio.sleep(0.05)

    async def outputs(self, function: str) -> dict[str, float]:
        assert self.engine is not None
        rows = await self.engine.storage.read(lambda tx: tx.raw_all(
            "SELECT event_id, output FROM runs WHERE function_id = :f AND status = 'completed'",
            {"f": function}))
        return {r["event_id"]: float(r["output"]) for r in rows}


async def batches(stack: Stack, name: str, total: int, size: int = 100) -> None:
    for start in range(0, total, size):
        await stack.send(name, min(size, total - start))


async def workload(kind: str, n: int, stack: Stack) -> dict[str, Any]:
    await stack.open()
    done_before = {"job": 0, "flow": 0}
    if kind in ("jobs", "latency", "steps"):  # warm-up, excluded
        function = "flow" if kind == "steps" else "job"
        await batches(stack, function, WARMUP)
        await stack.until_done(function, WARMUP)
        done_before[function] = WARMUP
    if kind == "jobs":
        began = time.perf_counter()
        await batches(stack, "job", n)
        await stack.until_done("job", WARMUP + n)
        return {"jobs_per_s": n / (time.perf_counter() - began)}
    if kind == "steps":
        began = time.perf_counter()
        await batches(stack, "flow", n)
        await stack.until_done("flow", WARMUP + n)
        elapsed = time.perf_counter() - began
        return {"per_step_ms": elapsed * 1000 / (n * 10), "workflows_per_s": n / elapsed}
    if kind == "latency":
        sent: dict[str, float] = {}
        for _ in range(n):
            at = time.time()
            (event_id,) = await stack.send("job", 1)
            sent[event_id] = at
            await asyncio.sleep(max(0.0, at + 0.02 - time.time()))
        await stack.until_done("job", WARMUP + n)
        outputs = await stack.outputs("job")
        lags = [(outputs[e] - at) * 1000 for e, at in sent.items()]
        return {"first_execution_p50_ms": p50(lags)}
    if kind == "sleepers":
        until = time.time() + sleep_lead(n)  # after every run is parked
        for start in range(0, n, 100):
            await stack.send("sleeper", min(100, n - start), {"until": until})
        await stack.until_done("sleeper", 0)
        while await stack._count("runs", "WHERE status = 'sleeping'") < n:
            if await stack._count("runs", "WHERE status = 'failed'"):
                raise RuntimeError("sleeper runs failed: see the worker's log")
            await asyncio.sleep(0.1)
        memory = rss_mb(stack.worker.pid)
        await stack.until_done("sleeper", n, timeout=600)
        woke = await stack.outputs("sleeper")
        return {"sleeping_worker_rss_mb": memory,
                "wake_all_s": max(woke.values()) - until}
    raise SystemExit(f"unknown workload {kind}")


def ingest(n: int, url: str, tmp: str) -> dict[str, Any]:
    """Events through the HTTP API (`stepwise server`), 100 per request, one client."""
    import httpx
    from common import wait as wait_for

    port = 18000 + os.getpid() % 1000
    server = spawn([PYTHON, "-m", "stepwise.cli", "server", "--db", url, "--port", str(port),
                    "--host", "127.0.0.1", "--insecure"], tmp)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def healthy() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, 60)
        body = [{"name": "nobody.listens", "data": {"i": i}} for i in range(100)]
        for _ in range(10):
            client.post("/api/v1/events", json=body).raise_for_status()
        began = time.perf_counter()
        for _ in range(n // 100):
            client.post("/api/v1/events", json=body).raise_for_status()
        return {"ingest_events_per_s": n / (time.perf_counter() - began)}
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["jobs", "steps", "latency", "sleepers", "ingest"])
    parser.add_argument("n", type=int)
    parser.add_argument("--sqlite", action="store_true")
    options = parser.parse_args()
    tmp = tempfile.mkdtemp()
    Path(tmp, "app.py").write_text(APP)
    if options.sqlite:
        figures = run(options, f"sqlite:///{tmp}/bench.db", tmp)
    else:
        with Schema() as schema:
            figures = run(options, schema.url, tmp)
    report(figures)


def run(options: argparse.Namespace, url: str, tmp: str) -> dict[str, Any]:
    if options.workload == "ingest":
        return ingest(options.n, url, tmp)
    stack = Stack(url, tmp)
    try:
        return asyncio.run(_run(options, stack))
    finally:
        stop(stack.worker)


async def _run(options: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    try:
        return await workload(options.workload, options.n, stack)
    finally:
        if stack.engine is not None:
            await stack.engine.storage.close()


if __name__ == "__main__":
    main()
