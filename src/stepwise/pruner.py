"""Retention passes: a server deletes finished runs past their window in the background, and
`stepwise prune` deletes those older than a duration, both through `Pruner.prune`, which first
adds the runs that finished since the last pass to the function stats' rollup.

A pass reads finished runs oldest first, a page at a time, and deletes the chosen ones in
small batches, each its own short transaction, with a pause between them: ingestion and
leasing go on between batches, and SQLite's writer is never held long. One process of a
deployment runs the background passes at a time (it holds a claim in the database, renewed
as it goes); a pass that dies half-way (kill -9) has deleted whole batches only, and the next
one goes on from what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from . import durations, metrics
from .engine import Engine
from .engine.retention import START, Deleted, Plan
from .engine.stats import ROLLUP_ROWS

log = logging.getLogger("stepwise.retention")

#: Finished runs read per page, and deleted per transaction (100: about 3 ms of SQLite's
#: writer here, steps and logs included).
PAGE = 1000
BATCH = 100
#: The pause between two deletions, at least: other writers go first.
PAUSE_S = 0.005
#: And at least this many times as long as the deletion took: a pass takes at most a third
#: of the database's time, however slow a batch is (bench/prune_impact.py).
PAUSE_RATIO = 2.0
#: How long a claim on the deployment's pass lasts without being renewed.
CLAIM_MS = 60_000
#: Idempotency keys past their window deleted per transaction.
KEYS_BATCH = 1000


@dataclass
class Result:
    """What one `prune` call deleted, and whether it stopped at its `max_runs` with more to do."""

    deleted: Deleted = field(default_factory=Deleted)
    keys: int = 0
    #: Rate-limit and throttle windows that stopped mattering, deleted.
    flow_windows: int = 0
    more: bool = False


class Pruner:
    """Deletes what retention says should go, for one engine."""

    def __init__(self, engine: Engine, *, interval_s: float = 60.0, batch: int = BATCH,
                 page: int = PAGE, pause_s: float = PAUSE_S) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.batch, self.page, self.pause_s = batch, page, pause_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    async def prune(self, plan: Plan, *, max_runs: int | None = None,
                    claimed: bool = False) -> Result:
        """Delete the finished runs past `plan`'s windows (at most about `max_runs`), then
        the old events no run holds and the idempotency keys whose window closed. `claimed`:
        renew the deployment's claim as it goes (a background pass)."""
        result = Result()
        # Counted before deleted: the function stats outlive the runs.
        while await self.engine.roll_up_stats() == ROLLUP_ROWS:
            await asyncio.sleep(self.pause_s)
        after: tuple[int, str] | None = START
        while after is not None:
            if claimed and not await self.engine.claim_retention_pass(self.owner, CLAIM_MS):
                return result  # another process took over (this one was frozen too long)
            page = await self.engine.prunable_runs(plan, after, self.page)
            for start in range(0, len(page.ids), self.batch):
                began = time.monotonic()
                deleted = await self.engine.delete_runs(page.ids[start:start + self.batch],
                                                        page.ended_by)
                _count(deleted)
                result.deleted.add(deleted)
                await self._pause(began)
            after = page.next
            if max_runs is not None and result.deleted.runs >= max_runs and after is not None:
                result.more = True
                return result
        window = plan.server.completed_ms
        if window is not None:  # events that started no run, or whose runs are gone
            before = self.engine.clock.now_ms() - window
            after = START
            while after is not None:
                ids, after = await self.engine.old_events(before, after, self.page)
                for start in range(0, len(ids), self.batch):
                    began = time.monotonic()
                    removed = await self.engine.delete_events(ids[start:start + self.batch])
                    metrics.PRUNED_ROWS.labels("events").inc(removed)
                    result.deleted.events += removed
                    await self._pause(began)
        while (expired := await self.engine.expire_idempotency_keys(KEYS_BATCH)) > 0:
            result.keys += expired
            if expired < KEYS_BATCH:
                break
            await asyncio.sleep(self.pause_s)
        while (expired := await self.engine.expire_flow_state(KEYS_BATCH)) > 0:
            result.flow_windows += expired
            metrics.PRUNED_ROWS.labels("flow_state").inc(expired)
            if expired < KEYS_BATCH:
                break
            await asyncio.sleep(self.pause_s)
        await self.engine.forget_old_stats()
        oldest = await self.engine.oldest_finished()
        metrics.OLDEST_KEPT.set(0 if oldest is None else
                                max(0, self.engine.clock.now_ms() - oldest) / 1000)
        return result

    async def _pause(self, began: float) -> None:
        """After a deletion that began at `began`: let the other writers have the database."""
        await asyncio.sleep(max(self.pause_s, (time.monotonic() - began) * PAUSE_RATIO))

    async def run(self) -> None:
        """Background passes under the stored retention settings, every `interval_s`, until
        cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is down, say: the next pass tries again
                log.exception("retention pass failed; trying again in %.0f s", self.interval_s)

    async def pass_once(self) -> Result | None:
        """One background pass, if this process holds the deployment's claim (None if not)."""
        if not await self.engine.claim_retention_pass(self.owner, CLAIM_MS):
            return None
        try:
            plan = await self.engine.retention_plan()
            result = await self.prune(plan, claimed=True)
        finally:
            with contextlib.suppress(Exception):
                await self.engine.release_retention_pass(self.owner)
        if result.deleted.runs or result.deleted.events or result.keys:
            log.info("retention (completed %s, failed %s%s): deleted %d runs, %d steps, "
                     "%d events, %d idempotency keys",
                     durations.show(plan.server.completed_ms),
                     durations.show(plan.server.failed_ms),
                     f", {len(plan.own)} functions with their own" if plan.own else "",
                     result.deleted.runs, result.deleted.steps, result.deleted.events,
                     result.keys)
        return result


def _count(deleted: Deleted) -> None:
    for table, n in deleted.to_json().items():
        if n:
            metrics.PRUNED_ROWS.labels(table).inc(n)
