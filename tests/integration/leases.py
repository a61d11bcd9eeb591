"""Helpers for tests that drive the engine with outcomes: leases as the tests name them."""

from __future__ import annotations

from stepwise.engine import Applied, Engine, Lease, Outcome
from stepwise.storage import Tx


async def held(engine: Engine, run_id: str, owner: str) -> Lease:
    """`owner`'s lease of `run_id` at its latest take: what an execution of `owner` that is
    not stale would write with (refused if another worker holds the run)."""
    def read(tx: Tx) -> int:
        row = tx.one("run_fence", run_id=run_id)
        assert row is not None, run_id
        return int(row["lease_epoch"])

    return Lease(run_id, owner, await engine.storage.read(read))


async def lease_ids(engine: Engine, app_id: str, functions: list[str], owner: str, limit: int,
                    lease_ms: int) -> list[str]:
    """The ids of the runs `owner` takes."""
    return [lease.run_id for lease in
            await engine.lease(app_id, functions, owner, limit, lease_ms)]


async def apply(engine: Engine, run_id: str, owner: str, outcomes: list[Outcome], *,
                last: bool) -> Applied:
    """`Engine.apply` under `owner`'s lease of `run_id` at its latest take (`held`)."""
    return await engine.apply(await held(engine, run_id, owner), outcomes, last=last)
