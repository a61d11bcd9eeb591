"""Durable steps/s with many runs in flight: R runs of N no-op steps, a worker of concurrency C.

    .venv/bin/python bench/steps_in_flight.py [--runs 100 --steps 50 --concurrency 100
                                               --repeat 3] [--sync] [--db URL]

Each repetition opens the storage (by default a fresh SQLite file in a temporary directory),
starts a `stepwise.Worker(app, storage, concurrency=C)` for an app of one function (an
`async def`, or a plain `def` with --sync) that runs N no-op `ctx.step.run` steps, and sends
the R events in one `Engine.ingest` call, as a library producer does. The clock runs from
that call until storage shows every run completed (polled every --poll-ms). Every run must
then be completed with its N steps stored, or the command fails.

Prints one JSON line: steps/s (R*N/seconds) and runs/s, their medians over the repetitions,
each repetition's figures, and on SQLite how many transactions the writer committed during
each (`SQLiteStorage.commits`), so steps per commit (per fsync) show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import stepwise
from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.storage import Storage, open_storage

EVENT = "bench.in_flight"


@dataclass
class Round:
    seconds: float
    commits: int | None  # transactions the SQLite writer committed meanwhile


def noop(i: int) -> int:
    return i


def make_app(app_id: str, steps: int, sync: bool) -> stepwise.App:
    app = stepwise.App(app_id)
    trigger = stepwise.on_event(EVENT)
    if sync:
        @app.function(id="in-flight", trigger=trigger, retries=0)
        def in_flight_sync(ctx: stepwise.Context) -> int:
            for i in range(steps):
                ctx.step.run(f"step-{i}", noop, i)
            return steps
    else:
        @app.function(id="in-flight", trigger=trigger, retries=0)
        async def in_flight(ctx: stepwise.Context) -> int:
            for i in range(steps):
                await ctx.step.run(f"step-{i}", noop, i)
            return steps
    return app


async def completed(storage: Storage, app_id: str) -> int:
    rows = await storage.read(lambda tx: tx.raw_all(
        "SELECT count(*) AS n FROM runs WHERE app_id = :app AND status = 'completed'",
        {"app": app_id}))
    return int(rows[0]["n"])


async def check(storage: Storage, app_id: str, runs: int, steps: int) -> None:
    """Every run completed, with its output and its `steps` completed steps stored."""
    rows = await storage.read(lambda tx: tx.raw_all(
        "SELECT r.id, r.status, r.output, (SELECT count(*) FROM steps s WHERE s.run_id = r.id "
        "AND s.status = 'completed') AS steps FROM runs r WHERE r.app_id = :app",
        {"app": app_id}))
    wrong = [r for r in rows if r["status"] != "completed" or int(r["steps"]) != steps
             or json.loads(r["output"]) != steps]
    if len(rows) != runs or wrong:
        raise SystemExit(f"FAILED: {len(rows)} runs of {runs} found, {len(wrong)} not completed "
                         f"with {steps} steps stored, e.g. {wrong[:3]}")


async def one_round(options: argparse.Namespace, url: str) -> Round:
    app_id = f"in-flight-{uuid.uuid4().hex[:8]}"  # this round's runs, in a shared --db too
    app = make_app(app_id, options.steps, options.sync)
    storage = open_storage(url)
    await storage.open()
    worker = stepwise.Worker(app, storage, concurrency=options.concurrency)
    await worker.start()
    producer = Engine(storage)
    events = [StoredEvent(id=f"{app_id}-{i}", name=EVENT, data="{}", ts=producer.clock.now_ms())
              for i in range(options.runs)]
    commits_before = getattr(storage, "commits", None)
    poll = options.poll_ms / 1000
    deadline = time.monotonic() + options.timeout
    try:
        began = time.perf_counter()
        await producer.ingest(events)
        while await completed(storage, app_id) < options.runs:
            if time.monotonic() > deadline:
                raise SystemExit(f"FAILED: not every run completed within {options.timeout} s")
            await asyncio.sleep(poll)
        seconds = time.perf_counter() - began
        commits = getattr(storage, "commits", None)
        await check(storage, app_id, options.runs, options.steps)
    finally:
        await worker.stop()
        await storage.close()
    return Round(seconds, None if commits is None or commits_before is None
                 else commits - commits_before)


async def main(options: argparse.Namespace) -> dict[str, Any]:
    rounds: list[Round] = []
    for _ in range(options.repeat):
        tmp = None if options.db else tempfile.mkdtemp(prefix="stepwise-in-flight-")
        try:
            rounds.append(await one_round(options, options.db or f"sqlite:///{tmp}/bench.db"))
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    total = options.runs * options.steps
    steps_per_s = [total / r.seconds for r in rounds]
    figures: dict[str, Any] = {
        "runs": options.runs, "steps": options.steps, "concurrency": options.concurrency,
        "function": "sync" if options.sync else "async",
        "db": "sqlite (fresh temp file)" if not options.db else options.db.split("://")[0],
        "steps_per_s_median": round(statistics.median(steps_per_s)),
        "runs_per_s_median": round(statistics.median(options.runs / r.seconds for r in rounds),
                                   1),
        "steps_per_s": [round(s) for s in steps_per_s],
        "seconds": [round(r.seconds, 4) for r in rounds],
        "stepwise": stepwise.__file__,
    }
    if all(r.commits is not None for r in rounds):
        figures["commits"] = [r.commits for r in rounds]
        figures["steps_per_commit"] = [round(total / r.commits, 2) if r.commits else None
                                       for r in rounds]
    return figures


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="a plain def function")
    parser.add_argument("--db", help="a database URL (default: a fresh SQLite file per "
                                     "repetition)")
    parser.add_argument("--poll-ms", type=float, default=5.0,
                        help="how often to look for the runs' completion")
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse(sys.argv[1:])))))
