"""The engine: every decision about events, runs and steps, between the executors and storage.

Executors (the in-process `Execution`, later remote ones over HTTP) report `outcomes`; the
server ingests events and manages runs; workers lease. All of them go through `Engine`, whose
methods run one engine operation each in one storage transaction:

- `ingest`: events in, runs started, waits delivered;
- `flow_control`: what happens when a run is created (idempotency, limits, groups, keys);
- `leasing`: which runs execute next; cron ticks, deadlines, steps whose time came;
- `runs`: a run's state for an executor, and applying its outcomes (retries, parking);
- `lifecycle`: fencing and the run state transitions every operation shares;
- `waits`, `definitions`, `retries`, `admin`: waits for events, stored definitions, retry
  decisions, operators' actions;
- `workers`: which workers are alive and what they serve;
- `retention`: which finished runs and events are deleted, a page at a time;
- `stats`: function statistics over time, from a rollup of finished runs;
- `sdk_events`: the lifecycle events a run of an SDK function emits when it ends;
- `sessions`, `audit`: dashboard sign-in sessions, and the log of who did what.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from .. import metrics
from ..clock import Clock
from ..definition import FunctionDefinition
from ..events import StoredEvent
from ..status import RunStatus
from ..storage import Storage
from ..storage.rows import EventRow, RunDetail, RunRow
from . import (
    admin,
    audit,
    definitions,
    ingest,
    leasing,
    lifecycle,
    retention,
    runs,
    search,
    sessions,
    stats,
    waits,
    workers,
)
from .admin import Conflict, NotFound
from .leasing import Leased
from .lifecycle import FOREVER
from .outcomes import Applied, Lease, Outcome, StepCompleted
from .runs import RunState

__all__ = ["FOREVER", "Applied", "Conflict", "Engine", "Lease", "Leased", "NotFound", "Outcome",
           "RunState"]

#: Leases made the general way after `lease_plain` did not fit, before trying it again.
PLAIN_LEASE_PAUSE = 20


class Engine:
    """The engine's operations over one storage, on one clock."""

    def __init__(self, storage: Storage, clock: Clock | None = None) -> None:
        self.storage = storage
        self.clock = clock or Clock()
        self._plain_misses = 0  # leases left before trying `lease_plain` again
        self._routes = ingest.Routes()  # what events started when last read (one-statement ingest)
        # An execution's common end in one statement (`runs.completion_in_one`), grouped with
        # other runs' steps: PostgreSQL. SQLite completes in process, without round trips.
        self._complete_in_one = storage.dialect == "postgres"

    # --- events and definitions --------------------------------------------------------------

    async def ingest(self, events: list[StoredEvent]) -> list[str]:
        """Store events durably and start their runs; answers once committed and synced."""
        return await self.storage.write(ingest.ingest_events, events, self.clock.now_ms(),
                                        self._routes)

    async def register(self, app_id: str, functions: list[FunctionDefinition],
                       source: definitions.AppSource = definitions.PYTHON_APP) -> bool:
        """Replace an app's stored definitions, so any server can route its events; False when
        they were stored already as they are."""
        return await self.storage.write(definitions.register, app_id, functions,
                                        self.clock.now_ms(), source)

    async def list_apps(self) -> list[dict[str, Any]]:
        return await self.storage.read(definitions.list_apps)

    async def list_functions(self) -> list[dict[str, Any]]:
        return await self.storage.read(definitions.list_all)

    async def list_functions_page(self, after: tuple[str, str] | None, limit: int
                                  ) -> list[dict[str, Any]]:
        """Up to `limit` functions after `after` (app id, function id), in that order."""
        return await self.storage.read(definitions.list_page, after, limit)

    # --- executors ---------------------------------------------------------------------------

    async def lease(self, app_id: str, functions: list[str], owner: str, limit: int,
                    lease_ms: int) -> list[Lease]:
        """Take due runs of `functions` (those the caller can execute) of app `app_id`."""
        return (await self._lease(app_id, functions, owner, limit, lease_ms, False)).leases

    async def lease_runs(self, app_id: str, functions: list[str], owner: str, limit: int,
                         lease_ms: int) -> Leased:
        """`lease`, answering what executing each run needs (`states`, as `load` would), read
        in the lease's own transaction: an executor starts without another round trip; and,
        when it came with the lease, what `next_due` would answer."""
        return await self._lease(app_id, functions, owner, limit, lease_ms, True)

    async def _lease(self, app_id: str, functions: list[str], owner: str, limit: int,
                     lease_ms: int, with_state: bool) -> Leased:
        now = self.clock.now_ms()
        found = await self.storage.write(
            leasing.lease, app_id, sorted(functions), owner, now,
            now + lease_ms, limit, with_state, self._plain_misses == 0, durable=False)
        # Where the plain lease does not fit (keyed runs, takeovers, due timers), trying it
        # first costs a round trip: after a miss, lease the general way for a while.
        if found.plain is False:
            self._plain_misses = PLAIN_LEASE_PAUSE
        elif found.plain is None and self._plain_misses:
            self._plain_misses -= 1
        if found.taken_over:
            metrics.LEASE_TAKEOVERS.inc(found.taken_over)
        for function_id in found.first_starts:
            metrics.run_started(function_id)
        return found

    async def deployment_stats(self) -> tuple[list[tuple[str, str, int]], int, int]:
        """Unfinished runs by function and status, runs due now and unleased, and how long
        the oldest of those has waited (ms)."""
        return await self.storage.read(admin.deployment_stats, self.clock.now_ms())

    async def renew(self, leases: list[Lease], lease_ms: int) -> None:
        await self.storage.write(leasing.renew_leases, leases, self.clock.now_ms() + lease_ms,
                                 durable=False)

    async def next_due(self, app_id: str) -> int | None:
        # No snapshot needed: each time stands alone, and a worker that acts on a stale one
        # only wakes early or polls.
        return await self.storage.read(leasing.next_due, app_id, snapshot=False)

    async def load_for_sdk(self, run_id: str) -> RunState | None:
        """`load` for an SDK's `use_api` read: only an SDK function's run executing now."""
        return await self.storage.read(runs.load_for_sdk, run_id, snapshot=False)

    async def checkpoint_target(self, run_id: str) -> runs.CheckpointTarget | None:
        """What an SDK's checkpoint needs of its run, if it is an SDK run executing now."""
        return await self.storage.read(runs.checkpoint_target, run_id, snapshot=False)

    async def load(self, run_id: str) -> RunState | None:
        # No snapshot needed: the run is leased by the caller, its event is immutable, and a
        # step resolved meanwhile is only seen sooner.
        return await self.storage.read(runs.load, run_id, snapshot=False)

    def apply(self, lease: Lease, outcomes: list[Outcome], *, last: bool,
              inline: bool = False) -> Awaitable[Applied]:
        """Apply an executor's outcomes in one transaction (see `runs.apply`), fenced by the
        `lease` it executes under. Not a coroutine function of its own: this is every step's
        path, one frame fewer."""
        if not last and len(outcomes) == 1 and type(outcomes[0]) is StepCompleted:
            return self._save_step(lease, outcomes[0], inline)
        if last and self._complete_in_one:
            params = runs.completion_in_one(lease, outcomes, self.clock.now_ms())
            if params is not None:
                return self._complete_run(lease, outcomes, params, inline)
        return self.storage.write(runs.apply, lease, outcomes, self.clock.now_ms(), last,
                                  inline=inline)

    async def _complete_run(self, lease: Lease, outcomes: list[Outcome],
                            params: dict[str, Any], inline: bool) -> Applied:
        """The run's completion after at most one step: one statement, which writes nothing
        when the run needs more or the lease is lost; the general way then decides."""
        row = await self.storage.write_statement("complete_leased_run", params, inline=inline)
        if row is None:
            return await self.storage.write(runs.apply, lease, outcomes, self.clock.now_ms(),
                                            True, inline=inline)
        applied = Applied()
        for step in outcomes[:-1]:  # the step stored with it, if any
            assert isinstance(step, StepCompleted)
            applied.outputs[step.step_id] = step.output
        applied.run_status = RunStatus.completed
        return applied

    async def _save_step(self, lease: Lease, done: StepCompleted, inline: bool) -> Applied:
        """A step's result mid-execution: one fenced statement; only when it stores nothing
        is there a read of why."""
        row = await self.storage.write_statement(
            "guarded_save_step", runs.guarded_step(lease, done), inline=inline)
        if row is None:
            return await self.storage.read(runs.why_not_stored, lease, done.step_id)
        applied = Applied()
        applied.outputs[done.step_id] = done.output
        return applied

    async def release(self, lease: Lease, delay_ms: int) -> None:
        await self.storage.write(lifecycle.release, lease, self.clock.now_ms() + delay_ms)

    # --- operators -----------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunDetail:
        return await self.storage.read(admin.get_run, run_id)

    async def list_runs(self, filters: dict[str, Any], limit: int = 50,
                        preview: int | None = None) -> list[RunRow]:
        return await self.storage.read(admin.list_runs, filters, limit, preview)

    async def search_runs(self, filters: dict[str, Any], q: str | None = None, limit: int = 50,
                          preview: int | None = None) -> search.Found:
        """A page of runs matching `filters` and the search `q` (`engine.search`), newest
        first, with how many match in all."""
        return await self.storage.read(admin.search_runs, filters, q, limit, preview)

    async def list_events(self, filters: dict[str, Any], limit: int = 50) -> list[EventRow]:
        return await self.storage.read(admin.list_events, filters, limit)

    async def signal(self, name: str, data: str) -> str | None:
        """Resume the run waiting for signal `name` with `data` (JSON); its id, or None when
        no run waits for it now."""
        return await self.storage.write(waits.deliver_signal, name, data, self.clock.now_ms())

    async def get_event(self, event_id: str) -> tuple[EventRow, list[RunRow]]:
        return await self.storage.read(admin.get_event, event_id)

    async def cancel(self, run_id: str) -> RunDetail:
        return await self.storage.write(admin.cancel_run, run_id, self.clock.now_ms())

    async def replay(self, run_id: str) -> RunDetail:
        return await self.storage.write(admin.replay_run, run_id, self.clock.now_ms())

    async def wake(self, run_id: str) -> RunDetail:
        return await self.storage.write(admin.wake_run, run_id, self.clock.now_ms())

    async def cancel_function_runs(self, app_id: str, function_id: str, after: int,
                                   before: int) -> int:
        return await self.storage.write(admin.cancel_function_runs, app_id, function_id, after,
                                        before, self.clock.now_ms())

    async def bulk(self, action: str, filters: dict[str, Any], *, dry_run: bool
                   ) -> dict[str, Any]:
        """Replay or cancel the runs matching `filters` (see `admin.bulk`)."""
        return await self.storage.write(admin.bulk, action, filters, self.clock.now_ms(),
                                        dry_run)

    async def rerun(self, run_id: str) -> RunDetail:
        return await self.storage.write(admin.rerun, run_id, self.clock.now_ms())

    async def function_stats(self, since: int, buckets: int) -> dict[str, Any]:
        return await self.storage.read(stats.function_stats, since, self.clock.now_ms(),
                                       buckets)

    async def roll_up_stats(self) -> int:
        """Add up to `stats.ROLLUP_ROWS` finished runs to the stats rollup: read, then written
        in a short transaction. Answers how many were read (0 when caught up, or when another
        process added them first)."""
        rollup = await self.storage.read(stats.read_rollup, self.clock.now_ms())
        if not rollup.rows or not await self.storage.write(stats.add_rollup, rollup,
                                                           durable=False):
            return 0
        return rollup.rows

    async def forget_old_stats(self) -> int:
        return await self.storage.write(stats.forget, self.clock.now_ms(), durable=False)

    async def workers(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Workers (live and recently gone) and queued runs no live worker serves."""
        return await self.storage.read(workers.overview, self.clock.now_ms())

    async def heartbeat(self, worker: dict[str, Any], ttl_ms: int) -> None:
        now = self.clock.now_ms()
        await self.storage.write(workers.heartbeat, worker, now, now + ttl_ms, durable=False)

    async def goodbye(self, worker_id: str) -> None:
        await self.storage.write(workers.goodbye, worker_id)

    async def run_counts(self) -> dict[str, int]:
        return await self.storage.read(admin.run_counts)

    async def change_mark(self) -> dict[str, Any]:
        """One row that changes whenever anything the dashboard shows does (live updates)."""
        return await self.storage.read(admin.change_mark, self.clock.now_ms(), snapshot=False)

    # --- retention (`retention`; the passes are `pruner.Pruner`'s) -------------------------

    async def retention_windows(self) -> retention.Windows:
        return await self.storage.read(retention.stored_windows)

    async def set_retention_windows(self, windows: retention.Windows) -> retention.Windows:
        return await self.storage.write(retention.store_windows, windows)

    async def claim_retention_pass(self, owner: str, hold_ms: int) -> bool:
        now = self.clock.now_ms()
        return await self.storage.write(retention.claim_pass, owner, now, now + hold_ms,
                                        durable=False)

    async def release_retention_pass(self, owner: str) -> None:
        await self.storage.write(retention.release_pass, owner, durable=False)

    async def retention_plan(self) -> retention.Plan:
        return await self.storage.read(retention.plan)

    async def prunable_runs(self, plan: retention.Plan, after: tuple[int, str], limit: int
                            ) -> retention.RunsPage:
        return await self.storage.read(retention.runs_page, plan, self.clock.now_ms(), after,
                                       limit)

    async def delete_runs(self, ids: list[str], ended_by: int) -> retention.Deleted:
        return await self.storage.write(retention.delete_runs, ids, ended_by)

    async def old_events(self, before: int, after: tuple[int, str], limit: int
                         ) -> tuple[list[str], tuple[int, str] | None]:
        return await self.storage.read(retention.events_page, before, after, limit)

    async def delete_events(self, ids: list[str]) -> int:
        return await self.storage.write(retention.delete_events, ids)

    async def expire_idempotency_keys(self, limit: int) -> int:
        return await self.storage.write(retention.expire_keys, self.clock.now_ms(), limit)

    async def expire_flow_state(self, limit: int) -> int:
        return await self.storage.write(retention.expire_flow_state, self.clock.now_ms(), limit)

    async def oldest_finished(self) -> int | None:
        return await self.storage.read(retention.oldest_finished)

    async def erase(self, match: dict[str, str | None], *, dry_run: bool,
                    cancel_unfinished: bool) -> dict[str, Any]:
        """Delete everything stored about a subject (see `retention.erase`)."""
        return await self.storage.write(retention.erase, match, self.clock.now_ms(), dry_run,
                                        cancel_unfinished)

    async def prune_counts(self, window_ms: int) -> dict[str, Any]:
        return await self.storage.read(retention.counts, window_ms, self.clock.now_ms())


    # --- sign-in sessions and the audit log (`sessions`, `audit`) -------------------------

    async def create_session(self, actor: str, role: str, ttl_ms: int
                             ) -> tuple[str, sessions.Session]:
        return await self.storage.write(sessions.create, actor, role, self.clock.now_ms(),
                                        ttl_ms)

    async def find_session(self, token: str) -> sessions.Session | None:
        return await self.storage.read(sessions.find, token, self.clock.now_ms(),
                                       snapshot=False)

    async def end_session(self, token: str) -> bool:
        return await self.storage.write(sessions.delete, token)

    async def record_audit(self, actor: str, role: str, action: str, target: str, status: int,
                           detail: Any) -> str:
        return await self.storage.write(audit.record, self.clock.now_ms(), actor, role, action,
                                        target, status, detail)

    async def audit_page(self, before: tuple[int, str] | None, limit: int
                         ) -> list[audit.Entry]:
        return await self.storage.read(audit.page, before, limit)
