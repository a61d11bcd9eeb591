"""Domain operations as short transactions over named queries, shared by every backend.

Each operation takes a `Tx` and runs inside one transaction opened by the backend. Raising
rolls the operation back. Workers are fenced by `_guard`: a step result or run outcome is
written only by the worker that holds the run's lease, and a completed step is never
overwritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import expressions, schedules
from ..errors import ExecutionStopped
from ..payloads import dumps, loads, new_id

log = logging.getLogger("stepwise.storage")
FOREVER = 253_402_300_799_000  # 9999-12-31: "no timeout" as a time

TERMINAL = ("completed", "failed", "cancelled")


class Tx(Protocol):
    def one(self, query: str, /, **params: Any) -> dict[str, Any] | None: ...
    def all(self, query: str, /, **params: Any) -> list[dict[str, Any]]: ...
    def exec(self, query: str, /, **params: Any) -> int: ...
    def raw_all(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...


class LeaseLost(ExecutionStopped):
    """This worker no longer holds the run (its lease expired and another worker took it)."""


class RunCancelled(ExecutionStopped):
    """The run was cancelled; the execution stops at this step boundary."""


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


@dataclass
class StoredEvent:
    id: str
    name: str
    data: str
    ts: int


@dataclass
class RunState:
    """What an execution needs: the run, its event, and its stored steps by id."""

    run: dict[str, Any]
    event: dict[str, Any] | None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin_error: Any = None


# --- definitions -------------------------------------------------------------------------

def register_functions(tx: Tx, app_id: str, definitions: list[dict[str, Any]], definition_json:
                       list[str], now: int) -> None:
    """Replace the app's definitions; keep the next tick of schedules that did not change."""
    tx.exec("delete_app_triggers", app_id=app_id)
    tx.exec("delete_app_functions", app_id=app_id)
    wanted = set()
    for d, text in zip(definitions, definition_json, strict=True):
        tx.exec("insert_function", app_id=app_id, id=d["id"], definition=text, now=now)
        for trigger in d["triggers"]:
            if "event" in trigger:
                tx.exec("insert_trigger", event_name=trigger["event"], app_id=app_id,
                        function_id=d["id"])
            elif "cron" in trigger:
                wanted.add((d["id"], trigger["cron"], trigger["tz"]))
                tx.exec("insert_schedule", app_id=app_id, function_id=d["id"],
                        cron=trigger["cron"], tz=trigger["tz"],
                        next_at=schedules.next_tick(trigger["cron"], trigger["tz"], now))
    for row in tx.all("app_schedules", app_id=app_id):
        if (row["function_id"], row["cron"], row["tz"]) not in wanted:
            tx.exec("delete_schedule", app_id=app_id, **row)


def list_functions(tx: Tx) -> list[dict[str, Any]]:
    return [{**loads(r["definition"]), "updated_at": r["updated_at"]}
            for r in tx.all("list_functions")]


# --- events ------------------------------------------------------------------------------

def ingest_events(tx: Tx, events: list[StoredEvent], now: int) -> list[str]:
    """Store events not stored yet and start a run of every function listening to each."""
    routes: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if tx.exec("insert_event", id=ev.id, name=ev.name, data=ev.data, ts=ev.ts, now=now) == 0:
            continue  # already stored: idempotent send
        if ev.name not in routes:
            routes[ev.name] = tx.all("functions_for_event", name=ev.name)
        for target in routes[ev.name]:
            create_run(tx, target["app_id"], target["function_id"], ev.id, max(now, ev.ts), now)
        _deliver_to_waits(tx, ev, now)
    return [ev.id for ev in events]


def event_json(ev: StoredEvent) -> dict[str, Any]:
    return {"name": ev.name, "data": loads(ev.data), "id": ev.id, "ts": ev.ts}


def _deliver_to_waits(tx: Tx, ev: StoredEvent, now: int) -> None:
    """Give the event to every run waiting for it whose match holds, once each."""
    paths = tx.all("wait_paths", name=ev.name)
    if not paths:
        return
    incoming = event_json(ev)
    for row in paths:
        path = row["match_path"]
        if path is None:
            candidates = tx.all("waits_without_match", name=ev.name)
        else:
            value = expressions.lookup(incoming, expressions.field_path(path))
            if value is expressions.MISSING:
                continue
            candidates = tx.all("waits_by_key", name=ev.name, path=path,
                                key=match_key(value))
        for wait in candidates:
            if wait["if_expr"]:
                try:
                    ok = expressions.evaluate(wait["if_expr"], {
                        "event": loads(wait["trigger_event"]), "async": incoming})
                except expressions.ExpressionError as exc:
                    log.warning("run %s: %s; the event does not match", wait["run_id"], exc)
                    continue
                if ok is not True:
                    continue
            if tx.exec("delete_wait", run_id=wait["run_id"], step_id=wait["step_id"]) == 0:
                continue
            if tx.exec("resolve_step", run_id=wait["run_id"], id=wait["step_id"],
                       status="completed", output=dumps(incoming, "event"), error=None, now=now,
                       expected="waiting"):
                wake(tx, wait["run_id"], now)


def match_key(value: Any) -> str:
    """How a matched value is compared: its canonical JSON."""
    return dumps(value, "match value")


def wake(tx: Tx, run_id: str, now: int) -> None:
    """Make a parked run available now; if it is executing, it comes back at once after."""
    tx.exec("nudge", run_id=run_id, now=now)
    tx.exec("wake_run_status", run_id=run_id)


def create_run(tx: Tx, app_id: str, function_id: str, event_id: str | None, available_at: int,
               now: int, origin_run_id: str | None = None, parent_run_id: str | None = None,
               parent_step_id: str | None = None) -> str:
    run_id = new_id()
    tx.exec("insert_run", id=run_id, app_id=app_id, function_id=function_id, event_id=event_id,
            origin_run_id=origin_run_id, parent_run_id=parent_run_id,
            parent_step_id=parent_step_id, now=now)
    tx.exec("enqueue", run_id=run_id, app_id=app_id, function_id=function_id,
            available_at=available_at)
    return run_id


# --- leasing -----------------------------------------------------------------------------

def lease(tx: Tx, app_id: str, owner: str, now: int, until: int, limit: int) -> list[str]:
    fire_schedules(tx, app_id, now)
    ids = [r["run_id"] for r in tx.all("lease", app_id=app_id, owner=owner, now=now, until=until,
                                       limit=limit)]
    for run_id in ids:
        tx.exec("mark_running", run_id=run_id, now=now)
    return ids


def next_due(tx: Tx, app_id: str) -> int | None:
    """When this app next has something to do: a queued run, an expiring lease, a cron tick."""
    times = [row["due"] for row in (tx.one("next_due", app_id=app_id),
                                    tx.one("next_schedule", app_id=app_id))
             if row is not None and row["due"] is not None]
    return int(min(times)) if times else None


def fire_schedules(tx: Tx, app_id: str, now: int) -> int:
    """Start one run per due cron tick (the most recent one when several were missed)."""
    fired = 0
    for row in tx.all("due_schedules", app_id=app_id, now=now):
        cron, tz = row["cron"], row["tz"]
        tick = max(int(row["next_at"]), schedules.latest_tick(cron, tz, now))
        event = StoredEvent(id=f"cron:{app_id}:{row['function_id']}:{tick}", name="stepwise/cron",
                            data=dumps({"cron": cron, "tz": tz, "tick": tick}, "cron event"),
                            ts=tick)
        if tx.exec("insert_event", id=event.id, name=event.name, data=event.data, ts=event.ts,
                   now=now):
            create_run(tx, app_id, row["function_id"], event.id, now, now)
            fired += 1
        tx.exec("set_schedule_next", app_id=app_id, function_id=row["function_id"], cron=cron,
                tz=tz, next_at=schedules.next_tick(cron, tz, now))
    return fired


def renew_leases(tx: Tx, owner: str, run_ids: list[str], until: int) -> None:
    for run_id in run_ids:
        tx.exec("renew_lease", owner=owner, run_id=run_id, until=until)


def _guard(tx: Tx, run_id: str, owner: str) -> None:
    row = tx.one("run_guard", run_id=run_id)
    if row is None:
        raise LeaseLost(f"run {run_id} no longer exists")
    if row["status"] == "cancelled":
        raise RunCancelled(run_id)
    if row["lease_owner"] != owner:
        raise LeaseLost(f"run {run_id} is no longer leased by {owner}")


# --- execution ---------------------------------------------------------------------------

def load_run(tx: Tx, run_id: str) -> RunState | None:
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        return None
    event = tx.one("get_event", id=run["event_id"]) if run["event_id"] else None
    steps = {s["id"]: s for s in tx.all("get_steps", run_id=run_id)}
    origin_error = None
    if run["origin_run_id"]:
        origin = tx.one("get_run", run_id=run["origin_run_id"])
        origin_error = loads(origin["error"]) if origin and origin["error"] else None
    return RunState(run, event, steps, origin_error)


def save_step(tx: Tx, run_id: str, owner: str, step: dict[str, Any], retry_was: int) -> str | None:
    """Store a finished step (completed or failed for good); return the output now stored."""
    _guard(tx, run_id, owner)
    if tx.exec("save_step", run_id=run_id, **step) == 0:
        # Already final: never overwrite, hand back what is stored.
        stored = tx.one("get_step", run_id=run_id, id=step["id"])
        return None if stored is None else stored["output"]
    if retry_was:
        tx.exec("set_retry", run_id=run_id, retry=0)
    return step["output"]  # type: ignore[no-any-return]


@dataclass
class Parking:
    """What an execution leaves behind when the run must wait: step rows (retrying, sleeping,
    waiting, invoking), waits for events, child runs to invoke, and when to come back."""

    available_at: int
    status: str
    retry: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    waits: list[dict[str, Any]] = field(default_factory=list)
    invokes: list[dict[str, Any]] = field(default_factory=list)


def suspend(tx: Tx, run_id: str, owner: str, parking: Parking, now: int) -> None:
    """Park the run in one transaction and give up its lease."""
    _guard(tx, run_id, owner)
    for step in parking.steps:
        tx.exec("save_step", run_id=run_id, **step)
    for wait in parking.waits:
        tx.exec("insert_wait", run_id=run_id, now=now, **wait)
    run = tx.one("get_run", run_id=run_id) if parking.invokes else None
    for invoke in parking.invokes:
        assert run is not None
        event = StoredEvent(id=f"invoke:{run_id}:{invoke['step_id']}",
                            name="stepwise/function.invoked", data=invoke["data"], ts=now)
        if tx.exec("insert_event", id=event.id, name=event.name, data=event.data, ts=event.ts,
                   now=now):
            create_run(tx, run["app_id"], invoke["function_id"], event.id, now, now,
                       parent_run_id=run_id, parent_step_id=invoke["step_id"])
    tx.exec("set_retry", run_id=run_id, retry=parking.retry)
    tx.exec("park", run_id=run_id, available_at=parking.available_at, now=now)
    tx.exec("set_run_status", run_id=run_id, status=parking.status)


def save_step_and_send(tx: Tx, run_id: str, owner: str, step: dict[str, Any], retry_was: int,
                       events: list[StoredEvent], now: int) -> str | None:
    """A `send_event` step: its result and its events commit together, or neither does."""
    stored = save_step(tx, run_id, owner, step, retry_was)
    if stored == step["output"]:
        ingest_events(tx, events, now)
    return stored


def expire_step(tx: Tx, run_id: str, owner: str, step_id: str, expected: str,
                status: str, output: str | None, error: str | None, now: int) -> dict[str, Any]:
    """A wait or invoke reached its timeout: settle the step unless an event or the invoked
    run settled it first; return the step as stored."""
    _guard(tx, run_id, owner)
    if expected == "waiting":
        tx.exec("delete_wait", run_id=run_id, step_id=step_id)
    tx.exec("resolve_step", run_id=run_id, id=step_id, status=status, output=output, error=error,
            now=now, expected=expected)
    row = tx.one("get_step", run_id=run_id, id=step_id)
    assert row is not None
    return row


def release(tx: Tx, run_id: str, owner: str, available_at: int) -> None:
    """Give a leased run back untouched (e.g. this worker does not know its function)."""
    _guard(tx, run_id, owner)
    tx.exec("requeue", run_id=run_id, available_at=available_at)
    tx.exec("set_run_status", run_id=run_id, status="queued")


def complete_run(tx: Tx, run_id: str, owner: str, output: str, now: int) -> None:
    _guard(tx, run_id, owner)
    tx.exec("finish_run", run_id=run_id, status="completed", output=output, error=None, now=now)
    tx.exec("dequeue", run_id=run_id)
    _settle_parent(tx, run_id, "completed", output, None, now)


def fail_run(tx: Tx, run_id: str, owner: str, error: str, now: int,
             failure_handler: str | None) -> str | None:
    """Fail the run for good; start its `on_failure` handler in the same transaction."""
    _guard(tx, run_id, owner)
    tx.exec("finish_run", run_id=run_id, status="failed", output=None, error=error, now=now)
    tx.exec("dequeue", run_id=run_id)
    _settle_parent(tx, run_id, "failed", None, error, now)
    if failure_handler is None:
        return None
    run = tx.one("get_run", run_id=run_id)
    assert run is not None
    return create_run(tx, run["app_id"], failure_handler, run["event_id"], now, now,
                      origin_run_id=run_id)


def _settle_parent(tx: Tx, run_id: str, status: str, output: str | None, error: str | None,
                   now: int) -> None:
    """An invoked run finished: its result becomes the invoking step's, and the parent wakes."""
    run = tx.one("get_run", run_id=run_id)
    if run is None or not run["parent_run_id"]:
        return
    if tx.exec("resolve_step", run_id=run["parent_run_id"], id=run["parent_step_id"],
               status=status, output=output, error=error, now=now, expected="invoking"):
        wake(tx, run["parent_run_id"], now)


# --- management --------------------------------------------------------------------------

def cancel_run(tx: Tx, run_id: str, now: int) -> dict[str, Any]:
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] in TERMINAL:
        raise Conflict(f"run {run_id} is already {run['status']}")
    tx.exec("finish_run", run_id=run_id, status="cancelled", output=None, error=None, now=now)
    tx.exec("dequeue", run_id=run_id)
    tx.exec("delete_run_waits", run_id=run_id)
    _settle_parent(tx, run_id, "failed", None, dumps(
        {"name": "RunCancelled", "message": f"invoked run {run_id} was cancelled"}, "error"), now)
    return get_run(tx, run_id)


def replay_run(tx: Tx, run_id: str, now: int) -> dict[str, Any]:
    """Start a failed or cancelled run again; its completed steps keep their results."""
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] not in ("failed", "cancelled"):
        raise Conflict(f"run {run_id} is {run['status']}; only failed or cancelled runs replay")
    tx.exec("replay_run", run_id=run_id)
    tx.exec("delete_failed_steps", run_id=run_id)
    tx.exec("enqueue", run_id=run_id, app_id=run["app_id"], function_id=run["function_id"],
            available_at=now)
    return get_run(tx, run_id)


def get_run(tx: Tx, run_id: str) -> dict[str, Any]:
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    run["steps"] = tx.all("get_steps", run_id=run_id)
    return run


_RUN_FILTERS = {"function": "function_id = :function", "status": "status = :status",
                "event_id": "event_id = :event_id", "app": "app_id = :app",
                "before": "id < :before"}


def list_runs(tx: Tx, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    where = [_RUN_FILTERS[k] for k, v in filters.items() if v is not None]
    params = {k: v for k, v in filters.items() if v is not None}
    sql = ("SELECT id, app_id, function_id, event_id, status, output, error, attempts, retry, "
           "origin_run_id, created_at, started_at, ended_at FROM runs"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY id DESC LIMIT :limit")
    return tx.raw_all(sql, {**params, "limit": limit})


def run_counts(tx: Tx) -> dict[str, int]:
    return {r["status"]: int(r["n"]) for r in tx.all("count_runs_by_status")}


#: Operations after which workers may find new runnable work (PostgreSQL sends a NOTIFY).
WAKES_WORKERS: frozenset[object] = frozenset({
    ingest_events, replay_run, fail_run, release, complete_run, cancel_run, suspend,
    save_step_and_send})
