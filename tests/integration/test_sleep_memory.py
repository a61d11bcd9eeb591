"""Sleeping runs cost rows, not memory: 10,000 of them leave the worker's heap as it was."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import timedelta
from pathlib import Path

import stepwise
from stepwise.storage import Tx
from stepwise.testing import Harness


def _sleeping(tx: Tx) -> int:
    rows = tx.raw_all("SELECT COUNT(*) AS n FROM runs WHERE status = 'sleeping'", {})
    return int(rows[0]["n"])


async def test_ten_thousand_sleeping_runs_do_not_grow_memory(tmp_path: Path) -> None:
    app = stepwise.App("t")

    @app.function(id="sleeper", trigger=stepwise.on_event("nap"))
    async def sleeper(ctx: stepwise.Context) -> None:
        await ctx.step.sleep("long", timedelta(days=30))

    async with Harness(app, f"sqlite:///{tmp_path / 'db.sqlite'}", concurrency=50) as h:
        async def park(count: int) -> None:
            for start in range(0, count, 500):
                response = await h.http.post("/api/v1/events", json=[
                    {"name": "nap"} for _ in range(min(500, count - start))])
                assert response.status_code == 200
            await h.settle(advance=False, timeout=120)

        await park(500)  # warm up caches, metrics labels, connections
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await park(10_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert await h.storage.read(_sleeping) == 10_500
        assert not h.worker.busy
    # Anything kept per run (an object, a task, a dict entry) would be >= 100 bytes per run.
    print(f"heap grew by {grown} bytes for 10,000 sleeping runs")
    assert grown < 512 * 1024, f"heap grew by {grown} bytes for 10,000 sleeping runs"
