"""Domain operations as short transactions over named queries, shared by every backend.

Each operation takes a `Tx` and runs inside one transaction opened by the backend. Raising
rolls the operation back. Workers are fenced by `_guard`: a step result or run outcome is
written only by the worker that holds the run's lease, and a completed step is never
overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .. import expressions, schedules
from ..errors import ExecutionStopped
from ..payloads import dumps, loads, new_id

log = logging.getLogger("stepwise.storage")
FOREVER = 253_402_300_799_000  # 9999-12-31: "no timeout" as a time

TERMINAL = ("completed", "failed", "cancelled", "skipped")


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
    batch: list[dict[str, Any]] = field(default_factory=list)


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
    routes: dict[str, list[tuple[str, str, dict[str, Any] | None]]] = {}
    waited: dict[str, bool] = {}
    for ev in events:
        if tx.exec("insert_event", id=ev.id, name=ev.name, data=ev.data, ts=ev.ts, now=now) == 0:
            continue  # already stored: idempotent send
        if ev.name not in routes:
            routes[ev.name] = [(r["app_id"], r["function_id"], _flow_of(r["definition"]))
                               for r in tx.all("functions_for_event", name=ev.name)]
        for app_id, function_id, flow in routes[ev.name]:
            create_run(tx, app_id, function_id, ev.id, max(now, ev.ts), now, flow=flow,
                       flow_known=True)
            for cancel in flow["cancel_on"] if flow else ():
                waited.pop(cancel["event"], None)  # the run may now wait for that name
        if ev.name not in waited:  # once per name: sends of one request do not add waits
            waited[ev.name] = tx.one("any_wait", name=ev.name) is not None
        if waited[ev.name]:
            _deliver_to_waits(tx, ev, now)
    return [ev.id for ev in events]


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event (a row, or a StoredEvent's fields) as functions and expressions see it."""
    return {"name": row["name"], "data": loads(row["data"]), "id": row["id"], "ts": row["ts"]}


def _deliver_to_waits(tx: Tx, ev: StoredEvent, now: int) -> None:
    """Give the event to every run waiting for it whose match holds, once each."""
    paths = tx.all("wait_paths", name=ev.name)
    if not paths:
        return
    incoming = event_json(asdict(ev))
    for row in paths:
        path = row["match_path"]
        if path is None:
            candidates = tx.all("waits_without_match", name=ev.name)
        else:
            found = match_of(incoming, path)
            if found is None:
                continue
            candidates = tx.all("waits_by_key", name=ev.name, path=path, key=found[1])
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
            if wait["kind"] == "cancel":
                _cancel(tx, wait["run_id"], now)
                continue
            if tx.exec("resolve_step", run_id=wait["run_id"], id=wait["step_id"],
                       status="completed", output=dumps(incoming, "event"), error=None, now=now,
                       expected="waiting"):
                wake(tx, wait["run_id"], now)


def match_of(event: dict[str, Any], path: str) -> tuple[str, str] | None:
    """The field at `path` in `event`, as (normalized path, canonical JSON of its value), which
    is how waits are stored and found; None when the event has no such field."""
    parts = expressions.field_path(path)
    value = expressions.lookup(event, parts)
    if value is expressions.MISSING:
        return None
    return ".".join(parts), dumps(value, "match value")


def wake(tx: Tx, run_id: str, now: int) -> None:
    """Make a parked run available now; if it is executing, it comes back at once after."""
    tx.exec("nudge", run_id=run_id, now=now)
    tx.exec("wake_run_status", run_id=run_id)


def create_run(tx: Tx, app_id: str, function_id: str, event_id: str | None, available_at: int,
               now: int, origin_run_id: str | None = None, parent_run_id: str | None = None,
               parent_step_id: str | None = None,
               flow: dict[str, Any] | None = None, flow_known: bool = False) -> str:
    """Start a run, applying the function's flow control; return its id (an existing run's
    when the event joined a debounce, a batch or an idempotent run). `flow` is the function's
    flow options when the caller already has them (`flow_known`)."""
    if not flow_known:
        flow = _flow(tx, app_id, function_id)
    if flow is None:
        return _insert_run(tx, app_id, function_id, event_id, available_at, now,
                           origin_run_id=origin_run_id, parent_run_id=parent_run_id,
                           parent_step_id=parent_step_id)
    event = _event_for(tx, event_id)
    scope = f"{app_id}:{function_id}"
    if flow["idempotency"]:
        value = _key_value(flow["idempotency"], event, missing=None)
        if value is not None:
            key = f"idem:{scope}:{value}"
            seen = tx.one("get_idempotency", key=key)
            if seen is not None and int(seen["expires_at"]) > now:
                return str(seen["run_id"])
    if flow["rate_limit"]:
        limit = flow["rate_limit"]
        key = f"rate:{scope}:{_key_value(limit['key'], event)}"
        if not _rate_window(tx, key, limit["limit"], limit["period_ms"], now):
            run_id = new_id()
            tx.exec("insert_skipped_run", id=run_id, app_id=app_id, function_id=function_id,
                    event_id=event_id, now=now, error=dumps({
                        "name": "RateLimited", "message": f"skipped: over the rate limit of "
                        f"{limit['limit']} runs per {limit['period_ms'] / 1000:g} s "
                        f"for key {_key_value(limit['key'], event)}"}, "error"))
            return run_id
    group_key = None
    if flow["debounce"]:
        debounce = flow["debounce"]
        group_key = f"debounce:{scope}:{_key_value(debounce['key'], event)}"
        group = tx.one("get_group", key=group_key)
        if group is not None:
            due = now + debounce["period_ms"]
            if debounce["timeout_ms"] is not None:
                due = min(due, int(group["first_at"]) + debounce["timeout_ms"])
            if tx.exec("postpone_unleased", run_id=group["run_id"], available_at=due):
                tx.exec("set_run_event", run_id=group["run_id"], event_id=event_id)
                return str(group["run_id"])
            tx.exec("delete_group", key=group_key)  # it started meanwhile: begin a new one
        available_at = max(available_at, now + debounce["period_ms"])
    if flow["batch"]:
        batch = flow["batch"]
        group_key = f"batch:{scope}:{_key_value(batch['key'], event)}"
        group = tx.one("get_group", key=group_key)
        if group is not None:
            tx.exec("insert_run_event", run_id=group["run_id"], position=group["size"],
                    event_id=event_id)
            if int(group["size"]) + 1 >= batch["max_size"]:
                tx.exec("delete_group", key=group_key)
                tx.exec("release_now", run_id=group["run_id"], now=now)
            else:
                tx.exec("grow_group", key=group_key)
            return str(group["run_id"])
        if batch["max_size"] > 1:
            available_at = max(available_at, now + batch["timeout_ms"])
        else:
            group_key = None
    if flow["throttle"]:
        throttle = flow["throttle"]
        key = f"throttle:{scope}:{_key_value(throttle['key'], event)}"
        available_at = max(available_at, _throttle_slot(tx, key, throttle["limit"],
                                                        throttle["period_ms"], now))
    priority = 0
    if flow["priority"]:
        value = _key_value(flow["priority"]["run"], event, missing=None, raw=True)
        if isinstance(value, int | float) and not isinstance(value, bool):
            priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, int(value)))
    run_id = _insert_run(tx, app_id, function_id, event_id, available_at, now,
                         origin_run_id=origin_run_id, parent_run_id=parent_run_id,
                         parent_step_id=parent_step_id, priority=priority)
    if group_key is not None:
        tx.exec("insert_group", key=group_key, run_id=run_id, now=now)
    if flow["batch"]:
        tx.exec("insert_run_event", run_id=run_id, position=0, event_id=event_id)
    if flow["idempotency"]:
        value = _key_value(flow["idempotency"], event, missing=None)
        if value is not None:
            tx.exec("upsert_idempotency", key=f"idem:{scope}:{value}", run_id=run_id,
                    expires_at=now + IDEMPOTENCY_MS)
    _add_keys_and_cancels(tx, run_id, app_id, function_id, flow, event, now)
    if flow["timeouts"]:
        for kind in ("start", "finish"):
            ms = flow["timeouts"][f"{kind}_ms"]
            if ms is not None:
                tx.exec("insert_deadline", run_id=run_id, kind=kind, app_id=app_id,
                        at=now + ms)
    return run_id


def _add_keys_and_cancels(tx: Tx, run_id: str, app_id: str, function_id: str,
                          flow: dict[str, Any], event: dict[str, Any], now: int) -> None:
    """Concurrency keys and cancel_on waits: kept while the run is unfinished."""
    scope = f"{app_id}:{function_id}"
    for index, limit in enumerate(flow["concurrency"]):
        if limit["scope"] == "app":
            key = f"app:{app_id}:{_key_value(limit['key'], event)}"
        elif limit["key"] is None:
            key = f"fn:{scope}"
        else:
            key = f"fn:{scope}:{index}:{_key_value(limit['key'], event)}"
        tx.exec("insert_queue_key", run_id=run_id, key=key, lim=limit["limit"])
    if flow["concurrency"]:
        tx.exec("mark_keyed", run_id=run_id)
    for index, cancel in enumerate(flow["cancel_on"]):
        _add_cancel_wait(tx, run_id, index, cancel, event, now)


IDEMPOTENCY_MS = 24 * 3600 * 1000
MAX_PRIORITY = 600


def _insert_run(tx: Tx, app_id: str, function_id: str, event_id: str | None, available_at: int,
                now: int, *, origin_run_id: str | None = None, parent_run_id: str | None = None,
                parent_step_id: str | None = None, priority: int = 0) -> str:
    run_id = new_id()
    tx.exec("insert_run", id=run_id, app_id=app_id, function_id=function_id, event_id=event_id,
            origin_run_id=origin_run_id, parent_run_id=parent_run_id,
            parent_step_id=parent_step_id, now=now)
    tx.exec("enqueue", run_id=run_id, app_id=app_id, function_id=function_id,
            available_at=available_at, priority=priority)
    return run_id


def _flow(tx: Tx, app_id: str, function_id: str) -> dict[str, Any] | None:
    """The function's flow options, or None when it has none (the fast path)."""
    row = tx.one("get_function", app_id=app_id, id=function_id)
    return None if row is None else _flow_of(row["definition"])


def _flow_of(definition: str) -> dict[str, Any] | None:
    flow = loads(definition).get("flow")
    if not flow or not any(flow.values()):
        return None
    return flow  # type: ignore[no-any-return]


def _event_for(tx: Tx, event_id: str | None) -> dict[str, Any]:
    row = tx.one("get_event", id=event_id) if event_id else None
    if row is None:
        return {"name": "", "data": {}, "id": None, "ts": 0}
    return event_json(row)


def _key_value(expression: str | None, event: dict[str, Any], *, missing: Any = "null",
               raw: bool = False) -> Any:
    """A key expression's value for this event, as canonical JSON (or `missing`)."""
    if expression is None:
        return "" if not raw else missing
    try:
        value = expressions.evaluate(expression, {"event": event})
    except expressions.ExpressionError as exc:
        log.warning("%s; using %r", exc, missing)
        return missing
    return value if raw else dumps(value, "key")


def _window(tx: Tx, key: str) -> list[int]:
    tx.exec("init_flow_state", key=key)
    row = tx.one("get_flow_state", key=key)
    return [int(t) for t in loads(row["state"])] if row else []


def _rate_window(tx: Tx, key: str, limit: int, period_ms: int, now: int) -> bool:
    """Accept one more run if fewer than `limit` were accepted in the last period."""
    recent = [t for t in _window(tx, key) if t > now - period_ms]
    if len(recent) >= limit:
        return False
    recent.append(now)
    tx.exec("set_flow_state", key=key, state=dumps(recent[-limit:], "state"))
    return True


def _throttle_slot(tx: Tx, key: str, limit: int, period_ms: int, now: int) -> int:
    """The earliest start keeping at most `limit` starts in any window of `period_ms`."""
    slots = [t for t in _window(tx, key) if t > now - period_ms]
    slot = now if len(slots) < limit else max(now, slots[-limit] + period_ms)
    if slots:
        slot = max(slot, slots[-1])  # first come, first served
    slots.append(slot)
    tx.exec("set_flow_state", key=key, state=dumps(slots[-limit:], "state"))
    return slot


def _add_cancel_wait(tx: Tx, run_id: str, index: int, cancel: dict[str, Any],
                     event: dict[str, Any], now: int) -> None:
    path = key = None
    if cancel["match"]:
        found = match_of(event, cancel["match"])
        if found is None:
            return  # nothing to match on: this cancel_on can never fire for this run
        path, key = found
    tx.exec("insert_cancel_wait", run_id=run_id, step_id=f"$cancel:{index}",
            event_name=cancel["event"], match_path=path, match_key=key, if_expr=cancel["if_"],
            trigger_event=dumps(event, "event"), expires_at=FOREVER, now=now)


# --- leasing -----------------------------------------------------------------------------

def lease(tx: Tx, app_id: str, owner: str, now: int, until: int, limit: int) -> list[str]:
    """Take up to `limit` due runs, highest priority first, within their concurrency limits."""
    fire_schedules(tx, app_id, now)
    expire_deadlines(tx, app_id, now)
    candidates = tx.all("lease_candidates", app_id=app_id, now=now, window=limit * 4 + 32)
    keys = {c["run_id"]: tx.all("run_keys", run_id=c["run_id"]) for c in candidates if c["keyed"]}
    inflight: dict[str, int] = {}
    for key in sorted({k["key"] for rows in keys.values() for k in rows}):
        tx.one("lock_key", key=key)  # PostgreSQL: one leaser per key at a time
        row = tx.one("inflight", key=key, now=now)
        inflight[key] = int(row["n"]) if row else 0
    picked = []
    for candidate in candidates:
        run_keys = keys.get(candidate["run_id"], [])
        if any(inflight[k["key"]] >= k["lim"] for k in run_keys):
            continue  # at its limit: stays queued, and a finishing run wakes the workers
        for k in run_keys:
            inflight[k["key"]] += 1
        picked.append(candidate["run_id"])
        if len(picked) == limit:
            break
    if picked:
        ids = dumps(picked, "run ids")
        tx.exec("take", ids=ids, owner=owner, until=until)
        tx.exec("mark_running_many", ids=ids, now=now)
        tx.exec("close_groups_of_runs", ids=ids)  # a debounce or batch closes as it starts
    return picked


def expire_deadlines(tx: Tx, app_id: str, now: int) -> None:
    """Cancel runs past their start or finish timeout."""
    for row in tx.all("due_deadlines", app_id=app_id, now=now):
        late = row["status"] not in TERMINAL and (
            row["kind"] == "finish" or row["started_at"] is None)
        tx.exec("delete_deadline", run_id=row["run_id"], kind=row["kind"])
        if late:
            _cancel(tx, row["run_id"], now, reason=f"{row['kind']} timeout")


def next_due(tx: Tx, app_id: str) -> int | None:
    """When this app next has something to do: a queued run, an expiring lease, a cron tick."""
    times = [row["due"] for row in (tx.one("next_due", app_id=app_id),
                                    tx.one("next_lease_expiry", app_id=app_id),
                                    tx.one("next_schedule", app_id=app_id),
                                    tx.one("next_deadline", app_id=app_id))
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
    batch = tx.all("get_run_events", run_id=run_id)
    return RunState(run, event if not batch else batch[0], steps, origin_error, batch)


def save_step(tx: Tx, run_id: str, owner: str, step: dict[str, Any], retry_was: int) -> str | None:
    """Store a finished step (completed or failed for good); return the output now stored."""
    _guard(tx, run_id, owner)
    if tx.exec("save_step", run_id=run_id, **step) == 0:
        # Already final: never overwrite, hand back what is stored.
        stored = tx.one("get_step", run_id=run_id, id=step["id"])
        return None if stored is None else stored["output"]
    if retry_was:
        tx.exec("set_retry", run_id=run_id, retry=0)
    if step["status"] == "failed":
        record_failure(tx, run_id, step["id"], step["attempts"], step["error"],
                       step["started_at"], step["ended_at"])
    return step["output"]  # type: ignore[no-any-return]


def record_failure(tx: Tx, run_id: str, step_id: str | None, attempt: int, error: str,
                   started_at: int | None, ended_at: int) -> None:
    """Keep a failed attempt (of a step, or of the body when `step_id` is None)."""
    tx.exec("insert_failure", run_id=run_id, step_id=step_id, attempt=attempt, error=error,
            started_at=started_at, ended_at=ended_at)


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
    failures: list[dict[str, Any]] = field(default_factory=list)


def suspend(tx: Tx, run_id: str, owner: str, parking: Parking, now: int) -> None:
    """Park the run in one transaction and give up its lease."""
    _guard(tx, run_id, owner)
    run = tx.one("get_run", run_id=run_id) if parking.invokes else None
    for invoke in parking.invokes:
        assert run is not None
        event = StoredEvent(id=f"invoke:{run_id}:{invoke['step_id']}",
                            name="stepwise/function.invoked", data=invoke["data"], ts=now)
        if tx.exec("insert_event", id=event.id, name=event.name, data=event.data, ts=event.ts,
                   now=now):
            child = get_run(tx, create_run(tx, run["app_id"], invoke["function_id"], event.id,
                                           now, now, parent_run_id=run_id,
                                           parent_step_id=invoke["step_id"]))
            if child["status"] in TERMINAL:  # skipped, or an idempotent run already done
                status = "completed" if child["status"] == "completed" else "failed"
                error = child["error"] or dumps({"name": "InvokeFailed", "message": (
                    f"invoked run {child['id']} is {child['status']}")}, "error")
                parking.steps = [
                    {**s, "status": status, "output": child["output"],
                     "error": None if status == "completed" else error}
                    if s["id"] == invoke["step_id"] else s for s in parking.steps]
                parking.available_at = now
    for step in parking.steps:  # after the invokes, which may have settled a step already
        tx.exec("save_step", run_id=run_id, **step)
        if step["status"] == "retrying":
            record_failure(tx, run_id, step["id"], step["attempts"], step["error"],
                           step["started_at"], step["ended_at"])
    for failure in parking.failures:
        record_failure(tx, run_id, **failure)
    for wait in parking.waits:
        tx.exec("insert_wait", run_id=run_id, now=now, **wait)
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


def _finish(tx: Tx, run_id: str, status: str, output: str | None, error: str | None,
            now: int) -> None:
    """A run reached a final status: drop everything that could still schedule it."""
    tx.exec("finish_run", run_id=run_id, status=status, output=output, error=error, now=now)
    tx.exec("dequeue", run_id=run_id)
    tx.exec("delete_queue_keys", run_id=run_id)
    tx.exec("delete_run_waits", run_id=run_id)
    tx.exec("delete_run_deadlines", run_id=run_id)
    tx.exec("delete_run_groups", run_id=run_id)
    _settle_parent(tx, run_id, status if status != "cancelled" else "failed", output,
                   error if status != "cancelled" else dumps(
                       {"name": "RunCancelled", "message": f"invoked run {run_id} was cancelled"},
                       "error"), now)


def complete_run(tx: Tx, run_id: str, owner: str, output: str, now: int) -> None:
    _guard(tx, run_id, owner)
    _finish(tx, run_id, "completed", output, None, now)


def fail_run(tx: Tx, run_id: str, owner: str, error: str, now: int,
             failure_handler: str | None, body_attempt: int | None = None) -> str | None:
    """Fail the run for good; start its `on_failure` handler in the same transaction.
    `body_attempt`: the function body itself failed (not a step), on that attempt."""
    _guard(tx, run_id, owner)
    if body_attempt is not None:
        record_failure(tx, run_id, None, body_attempt, error, None, now)
    _finish(tx, run_id, "failed", None, error, now)
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
    _cancel(tx, run_id, now)
    return get_run(tx, run_id)


def _cancel(tx: Tx, run_id: str, now: int, reason: str | None = None) -> bool:
    run = tx.one("get_run", run_id=run_id)
    if run is None or run["status"] in TERMINAL:
        return False
    error = None if reason is None else dumps(
        {"name": "RunCancelled", "message": f"cancelled: {reason}"}, "error")
    _finish(tx, run_id, "cancelled", None, error, now)
    return True


def cancel_function_runs(tx: Tx, app_id: str, function_id: str, after: int, before: int,
                         now: int) -> int:
    """Cancel every unfinished run of a function created in [after, before)."""
    rows = tx.all("cancellable_runs", app_id=app_id, function_id=function_id, after=after,
                  before=before)
    return sum(_cancel(tx, row["id"], now, reason="bulk cancel") for row in rows)


def replay_run(tx: Tx, run_id: str, now: int) -> dict[str, Any]:
    """Start a failed or cancelled run again; its completed steps keep their results."""
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run["status"] not in ("failed", "cancelled", "skipped"):
        raise Conflict(f"run {run_id} is {run['status']}; only failed, cancelled or skipped "
                       "runs replay")
    tx.exec("replay_run", run_id=run_id)
    tx.exec("delete_failed_steps", run_id=run_id)
    tx.exec("enqueue", run_id=run_id, app_id=run["app_id"], function_id=run["function_id"],
            available_at=now, priority=0)
    flow = _flow(tx, run["app_id"], run["function_id"])
    if flow is not None:
        _add_keys_and_cancels(tx, run_id, run["app_id"], run["function_id"], flow,
                              _event_for(tx, run["event_id"]), now)
    return get_run(tx, run_id)


def get_run(tx: Tx, run_id: str) -> dict[str, Any]:
    run = tx.one("get_run", run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    run["steps"] = tx.all("get_steps", run_id=run_id)
    run["failures"] = tx.all("get_failures", run_id=run_id)
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


def setting(tx: Tx, name: str, default: str) -> str:
    """A stored setting, created with `default` by the first caller (so every process that
    shares the database agrees on it)."""
    tx.exec("insert_setting", name=name, value=default)
    row = tx.one("get_setting", name=name)
    assert row is not None
    return str(row["value"])


def run_counts(tx: Tx) -> dict[str, int]:
    return {r["status"]: int(r["n"]) for r in tx.all("count_runs_by_status")}


#: Operations after which workers may find new runnable work (PostgreSQL sends a NOTIFY).
WAKES_WORKERS: frozenset[object] = frozenset({
    ingest_events, replay_run, fail_run, release, complete_run, cancel_run, suspend,
    save_step_and_send, cancel_function_runs})
