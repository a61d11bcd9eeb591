"""What operators do to runs (cancel, replay, bulk cancel) and what they read (runs, counts,
settings). Every change goes through `lifecycle`, like the executors' outcomes."""

from __future__ import annotations

from typing import Any, cast

from ..status import REPLAYABLE_RUN, TERMINAL_RUN
from ..storage import Tx
from ..storage.rows import FailureRow, RunDetail, RunRow, StepRow
from . import definitions, flow_control, lifecycle


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    """The run's status does not allow the operation (e.g. cancelling a completed run)."""


def get_run(tx: Tx, run_id: str) -> RunDetail:
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return RunDetail(**run, steps=cast(list[StepRow], tx.all("get_steps", run_id=run_id)),
                     failures=cast(list[FailureRow], tx.all("get_failures", run_id=run_id)))


def cancel_run(tx: Tx, run_id: str, now: int) -> RunDetail:
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] in TERMINAL_RUN:
        raise Conflict(f"run {run_id} is already {run['status']}")
    lifecycle.cancel(tx, run_id, now)
    return get_run(tx, run_id)


def cancel_function_runs(tx: Tx, app_id: str, function_id: str, after: int, before: int,
                         now: int) -> int:
    """Cancel every unfinished run of a function created in [after, before)."""
    rows = tx.all("cancellable_runs", app_id=app_id, function_id=function_id, after=after,
                  before=before)
    return sum(lifecycle.cancel(tx, row["id"], now, reason="bulk cancel") for row in rows)


def replay_run(tx: Tx, run_id: str, now: int) -> RunDetail:
    """Start a failed, cancelled or skipped run again; its completed steps keep their results."""
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] not in REPLAYABLE_RUN:
        raise Conflict(f"run {run_id} is {run['status']}; only "
                       f"{', '.join(sorted(REPLAYABLE_RUN))} runs replay")
    tx.exec("replay_run", run_id=run_id)
    tx.exec("delete_failed_steps", run_id=run_id)
    tx.exec("enqueue", run_id=run_id, app_id=run["app_id"], function_id=run["function_id"],
            available_at=now, priority=0)
    definition = definitions.get(tx, run["app_id"], run["function_id"])
    if definition is not None and not definition.flow.empty:
        flow_control.add_keys_and_cancels(tx, run_id, run["app_id"], run["function_id"],
                                          definition.flow,
                                          flow_control.event_for(tx, run["event_id"]), now)
    tx.wake_workers()
    return get_run(tx, run_id)


_RUN_FILTERS = {"function": "function_id = :function", "status": "status = :status",
                "event_id": "event_id = :event_id", "app": "app_id = :app",
                "before": "id < :before"}


def list_runs(tx: Tx, filters: dict[str, Any], limit: int, preview: int | None = None
              ) -> list[RunRow]:
    """Runs newest first. With `preview`, `output` and `error` hold at most `preview + 1`
    characters (longer means cut), so a page of big outputs is never read whole."""
    where = [_RUN_FILTERS[k] for k, v in filters.items() if v is not None]
    params = {k: v for k, v in filters.items() if v is not None}
    columns = ("output, error" if preview is None else
               "substr(output, 1, :preview) AS output, substr(error, 1, :preview) AS error")
    sql = (f"SELECT id, app_id, function_id, event_id, status, {columns}, attempts, retry, "
           "origin_run_id, parent_run_id, parent_step_id, created_at, started_at, ended_at "
           "FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY id DESC LIMIT :limit")
    if preview is not None:
        params["preview"] = preview + 1
    return cast(list[RunRow], tx.raw_all(sql, {**params, "limit": limit}))


def run_counts(tx: Tx) -> dict[str, int]:
    return {r["status"]: int(r["n"]) for r in tx.all("count_runs_by_status")}
