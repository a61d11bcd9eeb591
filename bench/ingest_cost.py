"""What storing an event and the run it starts costs, per run (the write path the run search
index adds to: issue 29's search writes a run's terms with the run).

    .venv/bin/python bench/ingest_cost.py [--backend sqlite|postgres|both] [--events 3000]
                                          [--rounds 5] [--postgres URL] [--label TEXT]

For each backend, a fresh database (a SQLite file; a fresh PostgreSQL schema) with one app of
two functions on `order.paid`, one plain and one with a concurrency key (the general path of
flow control); then `Engine.ingest` in process: --events events one at a time (each its own
transaction, as `POST /api/v1/events` of one event), and the same number in batches of 100;
each event `{"user": {"id", "name", "email"}, "order", "total", "items": [...]}` starts two
runs. Every figure is the median over --rounds rounds of microseconds per run (wall time of
the round / runs created). stepwise is imported as the venv finds it; PYTHONPATH=<tree>/src
measures another tree (`git archive` of a commit), for a before/after on one machine. Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

import stepwise
from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.payloads import dumps, new_id
from stepwise.storage import open_storage

POSTGRES = os.environ.get("STEPWISE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 100


def definitions() -> list[Any]:
    app = stepwise.App("shop")
    app.function(id="receipt", trigger=stepwise.on_event("order.paid"))(_body)
    app.function(id="fraud", trigger=stepwise.on_event("order.paid"),
                 concurrency=stepwise.Concurrency(limit=5, key="event.data.user.id"))(_body)
    return [f.definition() for f in app.functions.values()]


def _body(ctx: stepwise.Context) -> None:
    raise AssertionError("not executed")


def event(n: int, now: int) -> StoredEvent:
    data = {"user": {"id": n % 5000, "name": f"user {n % 5000}",
                     "email": f"u{n % 5000}@example.com"},
            "order": 100_000 + n, "total": n % 997, "items": [{"sku": "A-1", "qty": 2}]}
    return StoredEvent(id=new_id(), name="order.paid", data=dumps(data, "data"), ts=now)


async def measure(url: str, events: int, rounds: int) -> dict[str, float]:
    storage = open_storage(url)
    await storage.open()
    engine = Engine(storage)
    await engine.register("shop", definitions())
    singles: list[float] = []
    batches: list[float] = []
    try:
        for _ in range(rounds):
            now = engine.clock.now_ms()
            began = time.perf_counter()
            for n in range(events):
                await engine.ingest([event(n, now)])
            singles.append((time.perf_counter() - began) / (2 * events) * 1e6)
            began = time.perf_counter()
            for start in range(0, events, BATCH):
                await engine.ingest([event(n, now) for n in range(start, start + BATCH)])
            batches.append((time.perf_counter() - began) / (2 * events) * 1e6)
    finally:
        await storage.close()
    return {"us_per_run_one_event_per_call": round(statistics.median(singles), 1),
            "us_per_run_batches_of_100": round(statistics.median(batches), 1)}


def database(backend: str, base: str) -> tuple[str, Any]:
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="ingest-cost-")
        return f"sqlite:///{Path(folder) / 'stepwise.db'}", folder
    schema = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}", schema


def drop(backend: str, base: str, place: str) -> None:
    if backend == "sqlite":
        for child in Path(place).iterdir():
            child.unlink()
        Path(place).rmdir()
        return
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {place} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=POSTGRES)
    parser.add_argument("--label")
    options = parser.parse_args()
    out: dict[str, Any] = {"bench": "ingest_cost", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "label": options.label, "events": options.events,
                           "rounds": options.rounds,
                           "stepwise_from": str(Path(stepwise.__file__).resolve().parent),
                           "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    for backend in (["sqlite", "postgres"] if options.backend == "both" else [options.backend]):
        url, place = database(backend, options.postgres)
        try:
            out[backend] = asyncio.run(measure(url, options.events, options.rounds))
        finally:
            drop(backend, options.postgres, place)
        print(backend, out[backend], flush=True)
    out["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
