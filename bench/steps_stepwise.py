"""Per-step overhead of stepwise on SQLite: a 100-step function of no-op steps, run N times.

Prints one JSON line: per-step milliseconds (median and p90 over runs) and runs/s.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time

import stepwise
from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.storage import open_storage

STEPS = 100


def noop(i: int) -> int:
    return i


async def main(runs: int, db: str | None) -> dict[str, float]:
    app = stepwise.App("bench")
    per_step: list[float] = []
    done = asyncio.Event()

    @app.function(id="hundred-steps", trigger=stepwise.on_event("bench.go"), retries=0)
    async def hundred(ctx: stepwise.Context) -> int:
        start = time.perf_counter()
        for i in range(STEPS):
            await ctx.step.run(f"step-{i}", noop, i)
        per_step.append((time.perf_counter() - start) * 1000 / STEPS)
        if len(per_step) == runs:
            done.set()
        return STEPS

    storage = open_storage(db or f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    await storage.open()
    worker = stepwise.Worker(app, storage, concurrency=1)
    await worker.start()
    events = [StoredEvent(id=f"e{i}", name="bench.go", data="{}", ts=0)
              for i in range(runs)]
    began = time.perf_counter()
    await Engine(storage).ingest(events)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - began
    await worker.stop()
    await storage.close()
    per_step.sort()
    return {"per_step_ms_median": statistics.median(per_step),
            "per_step_ms_p90": per_step[int(len(per_step) * 0.9) - 1],
            "runs_per_s": runs / elapsed}


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    url = sys.argv[2] if len(sys.argv) > 2 else None
    print(json.dumps(asyncio.run(main(count, url))))
