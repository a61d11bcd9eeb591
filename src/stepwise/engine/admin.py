"""What operators do to runs (cancel, replay, bulk cancel) and what they read (runs, counts,
settings). Every change goes through `lifecycle`, like the executors' outcomes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from ..events import StoredEvent
from ..payloads import dumps
from ..status import REPLAYABLE_RUN, TERMINAL_RUN, UNFINISHED_RUN, RunStatus
from ..storage import Tx
from ..storage.rows import EventRow, FailureRow, LogRow, RunDetail, RunRow, StepRow
from . import definitions, flow_control, ingest, lifecycle, search


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    """The run's status does not allow the operation (e.g. cancelling a completed run)."""


def get_run(tx: Tx, run_id: str) -> RunDetail:
    """A run with its steps, failed attempts, event and the runs it started."""
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    event = tx.one("get_event", id=run["event_id"]) if run["event_id"] else None
    return RunDetail(**run, steps=cast(list[StepRow], tx.all("steps_of_run_detail", run_id=run_id)),
                     failures=cast(list[FailureRow], tx.all("get_failures", run_id=run_id)),
                     event=cast(EventRow | None, event),
                     children=cast(list[RunRow], tx.all("child_runs", run_id=run_id)),
                     logs=cast(list[LogRow], tx.all("get_run_logs", run_id=run_id)))


def get_event(tx: Tx, event_id: str) -> tuple[EventRow, list[RunRow]]:
    """A stored event and the runs it started."""
    event = tx.one("get_event", id=event_id)
    if event is None:
        raise NotFound(f"event {event_id} not found")
    return cast(EventRow, event), cast(list[RunRow], tx.all("event_runs", event_id=event_id))


_EVENT_FILTERS = {"name": "name = :name", "since": "received_at >= :since",
                  "until": "received_at < :until",
                  "before": "(received_at, id) < (SELECT received_at, id FROM events "
                            "WHERE id = :before)"}


def list_events(tx: Tx, filters: dict[str, Any], limit: int) -> list[EventRow]:
    """Events newest first (by when they were received); `before` is the last id seen."""
    params = {k: v for k, v in filters.items() if v is not None}
    where = [_EVENT_FILTERS[k] for k in params]
    sql = ("SELECT id, name, data, ts, received_at FROM events"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY received_at DESC, id DESC LIMIT :limit")
    return cast(list[EventRow], tx.raw_all(sql, {**params, "limit": limit}))


def cancel_run(tx: Tx, run_id: str, now: int) -> RunDetail:
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] in TERMINAL_RUN:
        raise Conflict(f"run {run_id} is already {run['status']}")
    ingest.announce(tx, lifecycle.cancel(tx, run_id, now), now)
    return get_run(tx, run_id)


def cancel_function_runs(tx: Tx, app_id: str, function_id: str, after: int, before: int,
                         now: int) -> int:
    """Cancel every unfinished run of a function created in [after, before)."""
    rows = tx.all("cancellable_runs", app_id=app_id, function_id=function_id, after=after,
                  before=before)
    return sum(ingest.announce(tx, lifecycle.cancel(tx, row["id"], now, reason="bulk cancel"),
                               now) for row in rows)


def replay_run(tx: Tx, run_id: str, now: int) -> RunDetail:
    """Start a failed, cancelled or skipped run again; its completed steps keep their results."""
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] not in REPLAYABLE_RUN:
        raise Conflict(f"run {run_id} is {run['status']}; only "
                       f"{', '.join(sorted(REPLAYABLE_RUN))} runs replay")
    _replay(tx, run, now)
    return get_run(tx, run_id)


def wake_run(tx: Tx, run_id: str, now: int) -> RunDetail:
    """End a run's sleeps and waits now, as if their time had come (an operator's "go on": a
    4-day pause skipped; a wait ends with no event, as at its timeout); a queued run waiting
    out a retry's backoff (a step's or the whole function's) is retried now. Invokes go on."""
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if not tx.exec("end_timers_now", run_id=run_id, now=now) and \
            run["status"] != RunStatus.queued:
        raise Conflict(f"run {run_id} is {run['status']}, with no sleep, wait or retry to "
                       "end")
    lifecycle.wake(tx, run_id, now)
    return get_run(tx, run_id)


def _replay(tx: Tx, run: RunRow, now: int) -> None:
    run_id = run["id"]
    lifecycle.replay(tx, run, now)
    definition = definitions.get(tx, run["app_id"], run["function_id"])
    if definition is not None and not definition.flow.empty:
        flow_control.add_keys_and_cancels(tx, run_id, run["app_id"], run["function_id"],
                                          definition.flow,
                                          flow_control.event_for(tx, run["event_id"]), now)


def list_runs(tx: Tx, filters: dict[str, Any], limit: int, preview: int | None = None
              ) -> list[RunRow]:
    """Runs newest first, as `search.find_runs` finds them (no count)."""
    return search.find_runs(tx, filters, limit, preview=preview).runs


def search_runs(tx: Tx, filters: dict[str, Any], q: str | None, limit: int,
                preview: int | None = None) -> search.Found:
    """A page of the runs matching `filters` and the search `q`, and their count."""
    return search.find_runs(tx, filters, limit, q=q, preview=preview, count=True)


#: The most runs one bulk request changes; the caller repeats while `more` is true.
BULK_LIMIT = 1000


def bulk(tx: Tx, action: str, filters: dict[str, Any], now: int, dry_run: bool
         ) -> dict[str, Any]:
    """Replay (failed, cancelled, skipped runs) or cancel (unfinished runs) every run matching
    `filters`, at most BULK_LIMIT per call, oldest first. Answers how many matched and, unless
    `dry_run`, how many changed (and of which function)."""
    allowed = REPLAYABLE_RUN if action == "replay" else UNFINISHED_RUN
    params = {k: v for k, v in filters.items() if v is not None}
    wanted = [params.pop("status")] if "status" in params else sorted(allowed)
    statuses = [s for s in wanted if s in allowed]
    if not statuses:
        return {"matched": 0, "changed": 0, "more": False, "by_function": {}}
    params["statuses"] = dumps(statuses, "statuses")
    where, params = search.where(tx, params, params.pop("q", None))
    count = tx.raw_all("SELECT COUNT(*) AS n " + where, params)
    matched = int(count[0]["n"]) if count else 0
    if dry_run or not matched:
        return {"matched": matched, "changed": 0, "more": False, "by_function": {}}
    rows = tx.raw_all(f"SELECT r.id, r.function_id {where} ORDER BY r.id LIMIT {BULK_LIMIT}",
                      params)
    by_function: dict[str, int] = {}
    for row in rows:
        if action == "replay":
            run = lifecycle.get_run(tx, row["id"])
            assert run is not None  # just matched, in this transaction
            _replay(tx, run, now)
        elif not ingest.announce(tx, lifecycle.cancel(tx, row["id"], now, reason="bulk cancel"),
                                 now):
            continue
        by_function[row["function_id"]] = by_function.get(row["function_id"], 0) + 1
    return {"matched": matched, "changed": sum(by_function.values()),
            "more": matched > len(rows), "by_function": by_function}


def rerun(tx: Tx, run_id: str, now: int) -> RunDetail:
    """A new run of a finished run's function with the same event(s), as if just sent (flow
    control that would merge or drop it, such as idempotency, rate limit, debounce or batch,
    does not apply: an operator asked for it)."""
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] not in TERMINAL_RUN:
        raise Conflict(f"run {run_id} is still {run['status']}; only finished runs re-run")
    definition = definitions.get(tx, run["app_id"], run["function_id"])
    if definition is None:
        raise Conflict(f"function {run['function_id']} is no longer registered in app "
                       f"{run['app_id']}")
    flow = replace(definition.flow, idempotency=None, rate_limit=None, debounce=None,
                   batch=None)
    announced: list[StoredEvent] = []
    new_id = flow_control.create_run(tx, run["app_id"], run["function_id"], run["event_id"],
                                     now, now, flow=flow, origin_run_id=run["origin_run_id"],
                                     announced=announced)
    ingest.ingest_events(tx, announced, now)
    tx.exec("set_rerun_of", run_id=new_id, rerun_of=run_id)
    tx.exec("copy_run_events", run_id=new_id, source=run_id)
    return get_run(tx, new_id)


def deployment_stats(tx: Tx, now: int) -> tuple[list[tuple[str, str, int]], int, int]:
    unfinished = [(r["function_id"], r["status"], int(r["n"]))
                  for r in tx.all("unfinished_by_function")]
    due = tx.one("due_unleased", now=now)
    count = int(due["n"]) if due else 0
    oldest = int(due["oldest"]) if due and due["oldest"] is not None else now
    return unfinished, count, now - oldest


def run_counts(tx: Tx) -> dict[str, int]:
    """Unfinished runs by status (an index range: no count of the whole history)."""
    return {r["status"]: int(r["n"]) for r in tx.all("count_unfinished_runs")}


def change_mark(tx: Tx, now: int) -> dict[str, Any]:
    """A fingerprint of what the dashboard shows (`change_mark` in queries.sql): two equal
    marks mean nothing it shows changed in between, but time passing."""
    return dict(tx.one("change_mark", now=now) or {})
