"""Flow control when a run is created: idempotency, rate limit, debounce, batch, throttle,
priority, concurrency keys, cancel_on and timeouts, from the function's stored options.

Concurrency limits are enforced later, when runs are leased (`leasing.lease`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .. import expressions
from ..errors import ErrorInfo
from ..events import StoredEvent, event_json
from ..flow import MAX_PRIORITY_SECONDS, FlowOptions
from ..payloads import dumps, loads, new_id
from ..storage import Tx, search
from . import definitions, lifecycle, waits

log = logging.getLogger("stepwise.engine")
IDEMPOTENCY_MS = 24 * 3600 * 1000


def create_run(tx: Tx, app_id: str, function_id: str, event_id: str | None, available_at: int,
               now: int, *, announced: list[StoredEvent], flow: FlowOptions | None = None,
               origin_run_id: str | None = None, parent_run_id: str | None = None,
               parent_step_id: str | None = None, event: StoredEvent | None = None) -> str:
    """Start a run, applying the function's flow control; return its id (an existing run's
    when the event joined a debounce, a batch or an idempotent run). `flow`: the function's
    options when the caller already has them; `event`: the event `event_id` when the caller
    has it (else it is read). `announced` receives what the ends of runs this cancelled
    announce (a singleton's), for the caller to ingest."""
    if flow is None:
        definition = definitions.get(tx, app_id, function_id)
        flow = definition.flow if definition is not None else FlowOptions()
    if flow.empty:
        terms = search.event_terms(event.name, event.data) if event is not None else \
            event_terms(tx, event_id)
        return _insert_run(tx, app_id, function_id, event_id, available_at, now, terms,
                           origin_run_id=origin_run_id, parent_run_id=parent_run_id,
                           parent_step_id=parent_step_id)
    start = _Start(tx, app_id, function_id, event_id, flow, event_for(tx, event_id), now,
                   available_at)
    existing = start.idempotent() or start.rate_limited() or start.debounced() or \
        start.batched() or start.singleton(announced)
    if existing is not None:
        return existing
    start.throttle()
    run_id = _insert_run(tx, app_id, function_id, event_id, start.available_at, now,
                         start.terms(), origin_run_id=origin_run_id, parent_run_id=parent_run_id,
                         parent_step_id=parent_step_id, priority=start.priority())
    start.record(run_id)
    return run_id


class _Start:
    """A run about to be created under flow control: each option either answers the run the
    event goes to instead (an idempotent one, a skipped one, an open debounce or batch), or
    shapes the new run (when it is due, its priority) and what is kept with it."""

    def __init__(self, tx: Tx, app_id: str, function_id: str, event_id: str | None,
                 flow: FlowOptions, event: dict[str, Any], now: int, available_at: int) -> None:
        self.tx, self.app_id, self.function_id, self.event_id = tx, app_id, function_id, event_id
        self.flow, self.event, self.now, self.available_at = flow, event, now, available_at
        self.scope = f"{app_id}:{function_id}"
        self.group_key: str | None = None  # the debounce or batch the new run opens
        self.singleton_key: str | None = None  # the singleton key the new run holds

    def terms(self) -> list[str]:
        """The search terms of a run of this event (`storage.search`)."""
        if self.event_id is None:
            return []
        return search.event_terms(self.event["name"], self.event["data"])

    def _idempotency_key(self) -> str | None:
        if not self.flow.idempotency:
            return None
        value = _key_value(self.flow.idempotency, self.event, missing=None)
        return None if value is None else f"idem:{self.scope}:{value}"

    def idempotent(self) -> str | None:
        key = self._idempotency_key()
        seen = self.tx.one("get_idempotency", key=key) if key is not None else None
        if seen is not None and int(seen["expires_at"]) > self.now:
            return str(seen["run_id"])
        return None

    def rate_limited(self) -> str | None:
        """Over the rate limit: the run is recorded skipped."""
        limit = self.flow.rate_limit
        if not limit:
            return None
        key_value = _key_value(limit.key, self.event)
        if _rate_window(self.tx, _rate_key(self.scope, key_value), limit.limit,
                        limit.period_ms, self.now):
            return None
        run_id = new_id()
        error: ErrorInfo = {"name": "RateLimited", "message": (
            f"skipped: over the rate limit of {limit.limit} runs per "
            f"{limit.period_ms / 1000:g} s for key {key_value}")}
        lifecycle.skip(self.tx, run_id, self.app_id, self.function_id, self.event_id, error,
                       self.now, self.terms())
        return run_id

    def debounced(self) -> str | None:
        """An open debounce takes the event and is postponed; else the new run opens one."""
        debounce = self.flow.debounce
        if not debounce:
            return None
        tx, now = self.tx, self.now
        self.group_key = f"debounce:{self.scope}:{_key_value(debounce.key, self.event)}"
        group = tx.one("get_group", key=self.group_key)
        if group is not None:
            due = now + debounce.period_ms
            if debounce.timeout_ms is not None:
                due = min(due, int(group["first_at"]) + debounce.timeout_ms)
            if tx.exec("postpone_unleased", run_id=group["run_id"], available_at=due):
                tx.exec("set_run_event", run_id=group["run_id"], event_id=self.event_id)
                # Found by its new event, no longer by the one it replaces.
                tx.exec("delete_event_terms", run_id=group["run_id"])
                tx.defer("insert_run_terms",
                         run_terms=search.pairs(str(group["run_id"]), self.terms()))
                return str(group["run_id"])
            tx.exec("delete_group", key=self.group_key)  # it started meanwhile: a new one
        self.available_at = max(self.available_at, now + debounce.period_ms)
        return None

    def batched(self) -> str | None:
        """An open batch takes the event (and is due now once full); else the new run opens
        one."""
        batch = self.flow.batch
        if not batch:
            return None
        if batch.if_ is not None and \
                _key_value(batch.if_, self.event, missing=None, raw=True) is not True:
            return None  # not for batching: it runs at once, alone
        tx = self.tx
        self.group_key = f"batch:{self.scope}:{_key_value(batch.key, self.event)}"
        group = tx.one("get_group", key=self.group_key)
        if group is not None:
            tx.exec("insert_run_event", run_id=group["run_id"], position=group["size"],
                    event_id=self.event_id)
            # Found by any event of its batch.
            tx.defer("insert_run_terms",
                     run_terms=search.pairs(str(group["run_id"]), self.terms()))
            if int(group["size"]) + 1 >= batch.max_size:
                tx.exec("delete_group", key=self.group_key)
                tx.exec("release_now", run_id=group["run_id"], now=self.now)
            else:
                tx.exec("grow_group", key=self.group_key)
            return str(group["run_id"])
        if batch.max_size > 1:
            self.available_at = max(self.available_at, self.now + batch.timeout_ms)
        else:
            self.group_key = None
        return None

    def singleton(self, announced: list[StoredEvent]) -> str | None:
        """A singleton whose key an unfinished run holds: in skip mode the new run is
        recorded skipped; in cancel mode that run is cancelled (what its end announces goes
        to `announced`) and the new one takes the key. A key that is false: no singleton."""
        singleton = self.flow.singleton
        if not singleton:
            return None
        value = "" if singleton.key is None else _key_value(singleton.key, self.event,
                                                            missing=None, raw=True)
        if value is False:
            return None
        self.singleton_key = f"singleton:{self.scope}:" + (
            "" if singleton.key is None else dumps(value, "key"))
        holder = self.tx.one("singleton_holder", key=self.singleton_key)
        if holder is None:
            return None
        if singleton.mode == "skip":
            run_id = new_id()
            lifecycle.skip(self.tx, run_id, self.app_id, self.function_id, self.event_id, {
                "name": "SingletonSkipped", "message": (
                    f"skipped: run {holder['run_id']} of this singleton function is not "
                    "finished")}, self.now, self.terms())
            self.singleton_key = None
            return run_id
        ended = lifecycle.cancel(self.tx, str(holder["run_id"]), self.now,
                                 reason=f"a new run of singleton function {self.function_id} "
                                        "replaced it")
        if ended is not None:
            announced.extend(ended.events)
        return None

    def throttle(self) -> None:
        """The new run is due at its throttle slot."""
        throttle = self.flow.throttle
        if throttle:
            key = _throttle_key(self.scope, _key_value(throttle.key, self.event))
            self.available_at = max(self.available_at, _throttle_slot(
                self.tx, key, throttle.limit, throttle.burst, throttle.period_ms, self.now))

    def priority(self) -> int:
        if not self.flow.priority:
            return 0
        value = _key_value(self.flow.priority.run, self.event, missing=None, raw=True)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(-MAX_PRIORITY_SECONDS, min(MAX_PRIORITY_SECONDS, int(value)))
        return 0

    def record(self, run_id: str) -> None:
        """What is kept with the new run: the group it opened, its idempotency key, its
        concurrency keys and cancel_on waits, its deadlines."""
        tx, flow, now = self.tx, self.flow, self.now
        if self.group_key is not None:
            tx.exec("insert_group", key=self.group_key, run_id=run_id, now=now)
        if self.singleton_key is not None:
            tx.exec("hold_singleton", key=self.singleton_key, run_id=run_id)
        if flow.batch:
            tx.exec("insert_run_event", run_id=run_id, position=0, event_id=self.event_id)
        key = self._idempotency_key()
        if key is not None:
            tx.exec("upsert_idempotency", key=key, run_id=run_id,
                    expires_at=now + IDEMPOTENCY_MS)
        add_keys_and_cancels(tx, run_id, self.app_id, self.function_id, flow, self.event, now)
        if flow.timeouts:
            for kind, ms in (("start", flow.timeouts.start_ms),
                             ("finish", flow.timeouts.finish_ms)):
                if ms is not None:
                    tx.exec("insert_deadline", run_id=run_id, kind=kind, app_id=self.app_id,
                            at=now + ms)


def _rate_key(scope: str, key_value: str) -> str:
    return f"rate:{scope}:{key_value}"


def _throttle_key(scope: str, key_value: str) -> str:
    return f"throttle:{scope}:{key_value}"


def keys_from_data(app_id: str, function_id: str, flow: FlowOptions, event: dict[str, Any]
                   ) -> list[str]:
    """The flow state an event of this function keeps after its run ended whose key is a
    value of the event's data (rate limit and throttle windows with a key): erased with it."""
    scope = f"{app_id}:{function_id}"
    keys = []
    if flow.rate_limit and flow.rate_limit.key is not None:
        keys.append(_rate_key(scope, _key_value(flow.rate_limit.key, event)))
    if flow.throttle and flow.throttle.key is not None:
        keys.append(_throttle_key(scope, _key_value(flow.throttle.key, event)))
    return keys


def add_keys_and_cancels(tx: Tx, run_id: str, app_id: str, function_id: str, flow: FlowOptions,
                         event: dict[str, Any], now: int) -> None:
    """Concurrency keys and cancel_on waits: kept while the run is unfinished."""
    scope = f"{app_id}:{function_id}"
    for index, limit in enumerate(flow.concurrency):
        if limit.scope == "app":
            key = f"app:{app_id}:{_key_value(limit.key, event)}"
        elif limit.key is None:
            key = f"fn:{scope}"
        else:
            key = f"fn:{scope}:{index}:{_key_value(limit.key, event)}"
        tx.exec("insert_queue_key", run_id=run_id, key=key, lim=limit.limit)
    if flow.concurrency:
        tx.exec("mark_keyed", run_id=run_id)
    for index, cancel in enumerate(flow.cancel_on):
        waits.add_cancel_wait(tx, run_id, index, cancel, event, now)


def _insert_run(tx: Tx, app_id: str, function_id: str, event_id: str | None, available_at: int,
                now: int, terms: list[str], *, origin_run_id: str | None = None,
                parent_run_id: str | None = None, parent_step_id: str | None = None,
                priority: int = 0) -> str:
    run_id = new_id()
    # Deferred: nothing reads what they answer, so on PostgreSQL they travel with the
    # transaction's next statement or its COMMIT.
    tx.defer("insert_run", id=run_id, app_id=app_id, function_id=function_id,
             event_id=event_id, origin_run_id=origin_run_id, parent_run_id=parent_run_id,
             parent_step_id=parent_step_id, now=now)
    tx.defer("enqueue", run_id=run_id, app_id=app_id, function_id=function_id,
             available_at=available_at, priority=priority)
    if terms:
        tx.defer("insert_run_terms", run_terms=search.pairs(run_id, terms))
    return run_id


class PlainRuns:
    """Runs without flow control, inserted together by one statement (`insert_runs`)."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.columns: dict[str, list[Any]] = {
            "ids": [], "app_ids": [], "function_ids": [], "event_ids": [], "available_ats": []}
        #: The runs' search terms, as `insert_run_terms` takes them.
        self.terms: list[str] = []

    def add(self, app_id: str, function_id: str, event_id: str, available_at: int,
            terms: list[str]) -> None:
        """One more run; `terms`: its event's (`search.event_terms`)."""
        run_id = new_id()
        for column, value in zip(self.columns.values(),
                                 (run_id, app_id, function_id, event_id, available_at),
                                 strict=True):
            column.append(value)
        self.terms += search.pairs(run_id, terms)

    def insert(self, tx: Tx) -> None:
        """Deferred, like `_insert_run`'s, and waking the workers when there were any."""
        if self.columns["ids"]:
            tx.defer("insert_runs", now=self.now, **self.columns)
        if self.terms:
            tx.defer("insert_run_terms", run_terms=self.terms)


def event_terms(tx: Tx, event_id: str | None) -> list[str]:
    """The search terms of a run of the stored event `event_id` (none without one)."""
    row = tx.one("get_event", id=event_id) if event_id else None
    return [] if row is None else search.event_terms(row["name"], row["data"])


def event_for(tx: Tx, event_id: str | None) -> dict[str, Any]:
    """A run's event as expressions see it (an empty one for runs without an event)."""
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
    tx.exec("set_flow_state", key=key, state=dumps(recent[-limit:], "state"),
            expires_at=now + period_ms)
    return True


def _throttle_slot(tx: Tx, key: str, limit: int, burst: int, period_ms: int, now: int
                   ) -> int:
    """The new run's start, as Inngest's throttle (GCRA, `constraintapi`'s `throttle` with
    its `maxBurst = limit + burst - 1`) admits it: one start every `period / limit` (the
    emission interval), and up to `limit + burst` at once when the key was quiet. The state
    is the theoretical arrival time (`tat`) of the next start; runs are queued first come,
    first served at the earliest start their arrival allows."""
    emission = period_ms / limit
    tolerance = emission * (limit + burst)
    tat = max(_tat(tx, key, emission), float(now))
    slot = max(now, math.ceil(tat + emission - tolerance))
    tx.exec("set_flow_state", key=key, state=dumps({"tat": tat + emission}, "state"),
            expires_at=math.ceil(tat + emission))
    return slot


def _tat(tx: Tx, key: str, emission: float) -> float:
    """A throttle key's stored `tat`; from a release that stored the starts of its window
    (a list), the last start plus one emission interval."""
    tx.exec("init_flow_state", key=key)
    row = tx.one("get_flow_state", key=key)
    state = loads(row["state"]) if row else None
    if isinstance(state, dict) and isinstance(state.get("tat"), int | float):
        return float(state["tat"])
    if isinstance(state, list) and state:
        return float(max(state)) + emission
    return 0.0
