"""Domain operations as short transactions over named queries, shared by every backend.

Each operation takes a `Tx` and runs inside one transaction opened by the backend. Raising
rolls the operation back. Workers are fenced by `_guard`: a step result or run outcome is
written only by the worker that holds the run's lease, and a completed step is never
overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ExecutionStopped
from ..payloads import loads, new_id

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
    tx.exec("delete_app_triggers", app_id=app_id)
    tx.exec("delete_app_functions", app_id=app_id)
    for d, text in zip(definitions, definition_json, strict=True):
        tx.exec("insert_function", app_id=app_id, id=d["id"], definition=text, now=now)
        for trigger in d["triggers"]:
            if "event" in trigger:
                tx.exec("insert_trigger", event_name=trigger["event"], app_id=app_id,
                        function_id=d["id"])


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
    return [ev.id for ev in events]


def create_run(tx: Tx, app_id: str, function_id: str, event_id: str | None, available_at: int,
               now: int, origin_run_id: str | None = None) -> str:
    run_id = new_id()
    tx.exec("insert_run", id=run_id, app_id=app_id, function_id=function_id, event_id=event_id,
            origin_run_id=origin_run_id, now=now)
    tx.exec("enqueue", run_id=run_id, app_id=app_id, function_id=function_id,
            available_at=available_at)
    return run_id


# --- leasing -----------------------------------------------------------------------------

def lease(tx: Tx, app_id: str, owner: str, now: int, until: int, limit: int) -> list[str]:
    ids = [r["run_id"] for r in tx.all("lease", app_id=app_id, owner=owner, now=now, until=until,
                                       limit=limit)]
    for run_id in ids:
        tx.exec("mark_running", run_id=run_id, now=now)
    return ids


def next_due(tx: Tx, app_id: str) -> int | None:
    row = tx.one("next_due", app_id=app_id)
    return None if row is None or row["due"] is None else int(row["due"])


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


def retry_later(tx: Tx, run_id: str, owner: str, step: dict[str, Any] | None, retry: int,
                available_at: int) -> None:
    """Record a failed attempt and hand the run back to the queue until `available_at`."""
    _guard(tx, run_id, owner)
    if step is not None:
        tx.exec("save_step", run_id=run_id, **step)
    tx.exec("set_retry", run_id=run_id, retry=retry)
    tx.exec("requeue", run_id=run_id, available_at=available_at)
    tx.exec("set_run_status", run_id=run_id, status="queued")


def release(tx: Tx, run_id: str, owner: str, available_at: int) -> None:
    """Give a leased run back untouched (e.g. this worker does not know its function)."""
    _guard(tx, run_id, owner)
    tx.exec("requeue", run_id=run_id, available_at=available_at)
    tx.exec("set_run_status", run_id=run_id, status="queued")


def complete_run(tx: Tx, run_id: str, owner: str, output: str, now: int) -> None:
    _guard(tx, run_id, owner)
    tx.exec("finish_run", run_id=run_id, status="completed", output=output, error=None, now=now)
    tx.exec("dequeue", run_id=run_id)


def fail_run(tx: Tx, run_id: str, owner: str, error: str, now: int,
             failure_handler: str | None) -> str | None:
    """Fail the run for good; start its `on_failure` handler in the same transaction."""
    _guard(tx, run_id, owner)
    tx.exec("finish_run", run_id=run_id, status="failed", output=None, error=error, now=now)
    tx.exec("dequeue", run_id=run_id)
    if failure_handler is None:
        return None
    run = tx.one("get_run", run_id=run_id)
    assert run is not None
    return create_run(tx, run["app_id"], failure_handler, run["event_id"], now, now,
                      origin_run_id=run_id)


# --- management --------------------------------------------------------------------------

def cancel_run(tx: Tx, run_id: str, now: int) -> dict[str, Any]:
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] in TERMINAL:
        raise Conflict(f"run {run_id} is already {run['status']}")
    tx.exec("finish_run", run_id=run_id, status="cancelled", output=None, error=None, now=now)
    tx.exec("dequeue", run_id=run_id)
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
WAKES_WORKERS: frozenset[object] = frozenset({ingest_events, replay_run, fail_run, release})
