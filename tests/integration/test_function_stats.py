"""Function stats from the rollup answer what a read of every run answers (counts exactly,
percentiles within a bucket), and outlive the runs that retention deletes."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import stepwise
from stepwise.engine.retention import uniform
from stepwise.engine.stats import SLOT_MS
from stepwise.pruner import Pruner
from stepwise.testing import Harness

HOUR = 3600.0


def make_app() -> stepwise.App:
    app = stepwise.App("stats")

    @app.function(id="work", trigger=stepwise.on_event("work"))
    async def work(ctx: stepwise.Context) -> Any:
        await ctx.step.sleep("take-time", timedelta(milliseconds=ctx.event.data["ms"]))
        if ctx.event.data.get("fail"):
            raise stepwise.NonRetriableError("no")
        return "done"

    @app.function(id="other", trigger=stepwise.on_event("other"))
    async def other(ctx: stepwise.Context) -> Any:
        return "quick"

    return app


async def _stats(h: Harness, hours: int, buckets: int) -> dict[str, Any]:
    response = await h.http.get("/api/v1/stats/functions",
                                params={"hours": hours, "buckets": buckets})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_rolled_up_stats_match_the_runs_and_outlive_them(db: str) -> None:
    rng = random.Random(7)
    async with Harness(make_app(), db) as h:
        for _hour in range(12):
            for _ in range(rng.randrange(1, 6)):
                await h.send("work", {"ms": rng.randrange(10, 200_000),
                                      "fail": rng.random() < 0.2})
                await h.send("other", {})
            await h.settle(max_advance=0.5 * HOUR)
            h.clock.advance(HOUR)
        # A slot's start now: the rollup's buckets then start where the exact read's do.
        h.clock.set((int(h.clock.now() * 1000) // SLOT_MS + 1) * SLOT_MS / 1000)
        exact = await _stats(h, 24, 24)
        assert exact["bucket_ms"] == 3_600_000
        work = exact["functions"]["work"]
        assert sum(work["completed"]) > 12 and sum(work["failed"]) > 0

        while await h.engine.roll_up_stats() > 0:
            pass
        rolled = await _stats(h, 24, 24)
        assert (rolled["since"], rolled["bucket_ms"]) == (exact["since"], exact["bucket_ms"])
        assert rolled["functions"].keys() == exact["functions"].keys()
        for function_id, stats in exact["functions"].items():
            got = rolled["functions"][function_id]
            assert (got["completed"], got["failed"]) == (stats["completed"], stats["failed"])
            for key in ("p50_ms", "p95_ms"):
                for exact_p, rolled_p in zip(stats[key], got[key], strict=True):
                    if exact_p is None:
                        assert rolled_p is None
                    else:  # within the histogram's bucket
                        assert abs(rolled_p - exact_p) <= 0.05 * exact_p + 1, (key, stats, got)

        # New runs after the rollup are counted raw on top of it.
        await h.send("other", {})
        await h.settle(advance=False)
        fresh = await _stats(h, 24, 24)
        assert sum(fresh["functions"]["other"]["completed"]) == \
            sum(rolled["functions"]["other"]["completed"]) + 1

        # Retention deletes the runs, not their counts.
        h.clock.advance(2 * HOUR)
        result = await Pruner(h.engine).prune(uniform(1000))
        assert result.deleted.runs > 12 and await h.runs() == []
        after = await _stats(h, 24, 24)
        for function_id in ("work", "other"):
            assert sum(after["functions"][function_id]["completed"]) == \
                sum(fresh["functions"][function_id]["completed"])
