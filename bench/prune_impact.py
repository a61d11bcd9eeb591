"""Does a retention pass slow event ingestion or leasing? (issue "Data lifecycle")

    .venv/bin/python bench/prune_impact.py [--backend sqlite|postgres|both] [--old 40000]
                                           [--calls 1500] [--repeat 3] [--out PATH]

For each backend: a fresh database (a SQLite file in a temporary directory; on PostgreSQL a
fresh schema of postgresql://postgres@127.0.0.1:5432/test or STEPWISE_BENCH_POSTGRES) with
--old finished runs that ended 40 days ago (2 steps and a log line each, one event each),
written straight into the tables, and one registered function that every sent event starts.
Then, --calls times in a row on one engine: `Engine.ingest` of one event (its run created in
the same transaction) and `Engine.lease` + `Engine.release` of that run, each timed with
time.perf_counter; once with nothing else running ("idle") and once while a `Pruner` deletes
the old runs (`prune(uniform(30 days))`: pages of 1,000, batches of 100, 5 ms pauses) on the
same event loop and storage, as a server's background pass would ("pruning"; the pass must
still be deleting when the calls end, or the run says so). The sides alternate --repeat times,
each on a fresh database. Figures: p50 / p99 ms of each call per side (medians over the
repetitions), and runs the pass deleted per second. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from typing import Any

import stepwise
from stepwise.engine import Engine
from stepwise.engine.retention import uniform
from stepwise.events import StoredEvent
from stepwise.payloads import new_id
from stepwise.pruner import Pruner
from stepwise.storage import Storage, open_storage

DAY_MS = 86_400_000
POSTGRES = os.environ.get("STEPWISE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _app() -> stepwise.App:
    app = stepwise.App("impact")

    @app.function(id="job", trigger=stepwise.on_event("job"))
    async def job(ctx: stepwise.Context) -> None:
        return None

    return app


def _fill(storage: Storage, old: int, now: int) -> None:
    """`old` finished runs that ended 40 days ago, straight into the tables."""
    at = now - 40 * DAY_MS
    events = [(f"e-{n:07d}", "job.old", "{}", at, at) for n in range(old)]
    runs = [(f"r-{n:07d}", "impact", "job", f"e-{n:07d}", "completed", '"ok"', at + n, at + n,
             at + n + 50) for n in range(old)]
    steps = [(f"r-{n:07d}", sid, seq, "completed", 1, '{"v":1}', at + n, at + n + 10, sid)
             for n in range(old) for seq, sid in enumerate(("a", "b"))]
    logs = [(f"r-{n:07d}", 0, at + n, "info", "a", "did a") for n in range(old)]
    statements = [
        ("INSERT INTO events (id, name, data, ts, received_at) VALUES (?, ?, ?, ?, ?)", events),
        ("INSERT INTO runs (id, app_id, function_id, event_id, status, output, created_at, "
         "started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", runs),
        ("INSERT INTO steps (run_id, id, seq, status, attempts, output, started_at, ended_at, "
         "name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", steps),
        ("INSERT INTO run_logs (run_id, seq, at, level, step_id, message) "
         "VALUES (?, ?, ?, ?, ?, ?)", logs)]
    if storage.dialect == "postgres":
        import psycopg

        with psycopg.connect(storage.url) as conn, conn.cursor() as cursor:  # type: ignore[attr-defined]
            for sql, rows in statements:
                cursor.executemany(sql.replace("?", "%s"), rows)
    else:
        import sqlite3

        conn = sqlite3.connect(storage.path)  # type: ignore[attr-defined]
        with conn:
            for sql, rows in statements:
                conn.executemany(sql, rows)
        conn.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _side(url: str, old: int, calls: int, pruning: bool) -> dict[str, Any]:
    storage = open_storage(url)
    await storage.open()
    try:
        engine = Engine(storage)
        await engine.register("impact", [f.definition() for f in _app().functions.values()])
        _fill(storage, old, engine.clock.now_ms())
        pruner = Pruner(engine)
        task = None
        began = time.perf_counter()
        if pruning:
            task = asyncio.create_task(pruner.prune(uniform(30 * DAY_MS)))
            await asyncio.sleep(0.05)  # under way
        ingest, lease = [], []
        for _ in range(calls):
            t = time.perf_counter()
            await engine.ingest([StoredEvent(new_id(), "job", "{}", engine.clock.now_ms())])
            ingest.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            leases = await engine.lease("impact", ["job"], "bench", 1, 30_000)
            lease.append((time.perf_counter() - t) * 1000)
            for held in leases:
                await engine.release(held, 3_600_000)  # out of the way of the next lease
        out: dict[str, Any] = {
            "ingest_p50_ms": _percentile(ingest, 0.5), "ingest_p99_ms": _percentile(ingest, 0.99),
            "lease_p50_ms": _percentile(lease, 0.5), "lease_p99_ms": _percentile(lease, 0.99)}
        if task is not None:
            overlapped = not task.done()
            result = await task
            elapsed = time.perf_counter() - began
            out.update(deleted=result.deleted.runs, overlapped=overlapped,
                       deleted_per_s=result.deleted.runs / elapsed)
            if result.deleted.runs != old:
                raise RuntimeError(f"the pass deleted {result.deleted.runs} of {old} old runs")
        return out
    finally:
        await storage.close()


async def _database(backend: str) -> tuple[str, Any]:
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="prune-impact-")
        return f"sqlite:///{folder}/stepwise.db", lambda: shutil.rmtree(folder)
    import psycopg

    schema = f"prune_impact_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    separator = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{separator}options=-csearch_path%3D{schema}", drop


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--old", type=int, default=40_000)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    report: dict[str, Any] = {"bench": "prune_impact", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "old": args.old, "calls": args.calls, "repeat": args.repeat,
                              "cpu_count": os.cpu_count(), "python": platform.python_version(),
                              "backends": {}}
    for backend in backends:
        sides: dict[str, list[dict[str, Any]]] = {"idle": [], "pruning": []}
        for _ in range(args.repeat):
            for side in ("idle", "pruning"):
                url, cleanup = await _database(backend)
                try:
                    sides[side].append(await _side(url, args.old, args.calls, side == "pruning"))
                finally:
                    cleanup()
        summary = {side: {key: statistics.median(r[key] for r in results)
                          for key in results[0] if key != "overlapped"}
                   for side, results in sides.items()}
        summary["pruning"]["overlapped_all"] = all(r["overlapped"] for r in sides["pruning"])
        report["backends"][backend] = {"runs": sides, "median": summary}
        print(f"{backend}: {'side':8} {'ingest p50':>10} {'p99':>7} {'lease p50':>10} {'p99':>7}")
        for side in ("idle", "pruning"):
            m = summary[side]
            print(f"{'':{len(backend) + 2}}{side:8} {m['ingest_p50_ms']:10.2f} "
                  f"{m['ingest_p99_ms']:7.2f} {m['lease_p50_ms']:10.2f} {m['lease_p99_ms']:7.2f}")
        m = summary["pruning"]
        print(f"{'':{len(backend) + 2}}the pass deleted {m['deleted_per_s']:,.0f} runs/s"
              + ("" if m["overlapped_all"] else " (it ended before the calls did in some runs)"))
    line = json.dumps(report)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    asyncio.run(main())
