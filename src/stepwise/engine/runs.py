"""A run's state for an executor, and applying the outcomes an executor reports.

`apply` is where every decision about a run's progress is made, in one transaction per
batch: a step's result is stored once and never overwritten; a failure is retried or final
under the function's stored retry policy; sleeps, waits and invokes are recorded; at the end
of an execution the run parks until its earliest pending step is due. An outcome from an
executor that no longer holds the run's lease is refused (`LeaseLost`) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from .. import expressions
from ..definition import FunctionDefinition, RetryPolicy
from ..errors import ErrorInfo
from ..events import StoredEvent
from ..payloads import dumps, loads, storable_text
from ..status import TERMINAL_RUN, RunStatus, StepStatus
from ..storage import Tx
from ..storage.rows import EventRow, RunRow, StepRow
from . import definitions, flow_control, ingest, lifecycle, retries, sdk_events, waits
from .outcomes import (
    Applied,
    EventsSent,
    Invoke,
    Lease,
    Logged,
    LogLine,
    Outcome,
    RunCompleted,
    RunFailed,
    SleepUntil,
    StepCompleted,
    StepFailed,
    WaitForEvent,
    WaitForSignal,
)

#: While parked, a run shows the most urgent of its pending steps.
_PARKED_AS = {StepStatus.retrying: RunStatus.queued, StepStatus.sleeping: RunStatus.sleeping,
              StepStatus.waiting: RunStatus.waiting, StepStatus.invoking: RunStatus.waiting}
_RANK = {RunStatus.queued: 3, RunStatus.sleeping: 2, RunStatus.waiting: 1}
#: A pending step's kind as stored (a code step's is 'run').
_KIND = {SleepUntil: "sleep", WaitForEvent: "wait", WaitForSignal: "wait", Invoke: "invoke"}
#: Bound as an exact `str`: sqlite3 adapts `str` subclasses (enums) through a slow path, and
#: this is every step's write.
_COMPLETED = StepStatus.completed.value


@dataclass
class RunState:
    """What an executor needs: the run, its event(s), its stored steps by id, for an
    `on_failure` run the error of the run that failed, and the lease it executes under (None:
    read outside a lease, to look at)."""

    run: RunRow
    event: EventRow | None
    steps: dict[str, StepRow] = field(default_factory=dict)
    origin_error: ErrorInfo | None = None
    batch: list[EventRow] = field(default_factory=list)
    lease: Lease | None = None


def load(tx: Tx, run_id: str) -> RunState | None:
    key = {"run_id": run_id}  # four independent reads, sent together
    found, event, steps, batch = tx.each([("get_run", key), ("event_of_run", key),
                                          ("get_steps", key), ("get_run_events", key)])
    if not found:
        return None
    return _state(tx, cast(RunRow, found[0]), event[0] if event else None, steps, batch)


def load_for_sdk(tx: Tx, run_id: str) -> RunState | None:
    """`load`, only for an SDK function's run that is executing: all that an SDK's `use_api`
    reads need. Any other run (a Python function's, one finished or waiting) is not there
    for the signing key, which every SDK app of the server holds."""
    found = tx.one("definition_of_run", run_id=run_id)
    if found is None or not found["sdk"]:
        return None
    state = load(tx, run_id)
    return state if state is not None and state.run["status"] == RunStatus.running else None


@dataclass(frozen=True)
class CheckpointTarget:
    """What an SDK's checkpoint needs of the run it stores steps in (`remote.checkpoint`):
    its function, how many of its steps have ended, and the failed attempts of the steps
    being retried."""

    function_id: str
    ended: int
    retrying: dict[str, int]


def checkpoint_target(tx: Tx, run_id: str) -> CheckpointTarget | None:
    """`CheckpointTarget` for an SDK function's run that is executing (None for any other
    run, as `load_for_sdk`); two small reads, whatever the run has stored (a checkpoint is
    every step's path)."""
    key = {"run_id": run_id}
    found, retrying = tx.each([("checkpoint_target", key), ("retrying_steps", key)])
    if not found or not found[0]["sdk"] or found[0]["status"] != RunStatus.running:
        return None
    return CheckpointTarget(str(found[0]["function_id"]), int(found[0]["ended"]),
                            {str(r["id"]): int(r["attempts"]) for r in retrying})


#: What `states` reads besides the runs (which `leasing.lease` has from starting them).
STATE_READS = ("events_of_runs", "steps_of_runs")


def states(tx: Tx, owner: str, started: list[dict[str, Any]], events: list[dict[str, Any]],
           steps: list[dict[str, Any]]) -> list[RunState]:
    """The states of the runs just started for `owner` (`started`: rows of `start_runs`, in
    lease order, each with its take's epoch) from the rows of `STATE_READS` (read by the
    caller with its own statements)."""
    event_of: dict[str, dict[str, Any]] = {}
    batch_of: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(events, key=lambda e: -1 if e["position"] is None else e["position"]):
        run_id, position = event.pop("run_id"), event.pop("position")
        if position is None:
            event_of[run_id] = event
        else:
            batch_of.setdefault(run_id, []).append(event)
    steps_of: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        steps_of.setdefault(step.pop("run_id"), []).append(step)
    found = []
    for row in started:
        run = {k: v for k, v in row.items() if k not in ("first_start", "lease_epoch")}
        state = _state(tx, cast(RunRow, run), event_of.get(run["id"]),
                       steps_of.get(run["id"], []), batch_of.get(run["id"], []))
        state.lease = Lease(run["id"], owner, int(row["lease_epoch"]))
        found.append(state)
    return found


def _state(tx: Tx, run: RunRow, event: dict[str, Any] | None, steps: list[dict[str, Any]],
           batch: list[dict[str, Any]]) -> RunState:
    origin_error = None
    if run["origin_run_id"]:
        origin = lifecycle.get_run(tx, run["origin_run_id"])
        origin_error = loads(origin["error"]) if origin and origin["error"] else None
    return RunState(run, cast(EventRow, batch[0] if batch else event),
                    {s["id"]: cast(StepRow, s) for s in steps}, origin_error,
                    cast(list[EventRow], batch))


class _Batch:
    """One `apply` call's view of the run, with lazily loaded definition."""

    __slots__ = ("_definition", "_run", "applied", "body_retry_at", "now", "retry", "run_id",
                 "tx")

    def __init__(self, tx: Tx, run_id: str, retry: int, now: int) -> None:
        self.tx, self.run_id, self.now = tx, run_id, now
        self.retry = retry
        self.body_retry_at: int | None = None
        self.applied = Applied()
        self._run: RunRow | None = None
        self._definition: FunctionDefinition | None = None

    @property
    def run(self) -> RunRow:
        """The run's row, read only by the outcomes that need its app, function or event."""
        if self._run is None:
            self._run = lifecycle.get_run(self.tx, self.run_id)
            assert self._run is not None  # the guard just read it
        return self._run

    @property
    def definition(self) -> FunctionDefinition:
        if self._definition is None:
            found = definitions.get(self.tx, self.run["app_id"], self.run["function_id"])
            self._definition = found or FunctionDefinition(self.run["function_id"],
                                                           self.run["app_id"])
        return self._definition

    @property
    def policy(self) -> RetryPolicy:
        return self.definition.retry

    def stored_final(self, row: dict[str, object]) -> StepRow | None:
        """Store a completed or failed-for-good step; None when this call stored it, else the
        row stored first (a completed step is never overwritten)."""
        if self.tx.one("save_step", run_id=self.run_id, **row) is not None:
            self.set_retry(0)  # the step moved on: a later failure starts counting afresh
            return None
        return _stored(self.tx, self.run_id, str(row["id"]))

    def set_retry(self, retry: int) -> None:
        """The run's current retry count (what `ctx.attempt` starts from)."""
        if retry != self.retry:
            self.tx.exec("set_retry", run_id=self.run_id, retry=retry)
            self.retry = retry

    def report_stored(self, stored: StepRow) -> None:
        _report_stored(self.applied, stored)

    def insert_pending(self, step: SleepUntil | WaitForEvent | WaitForSignal | Invoke,
                       status: StepStatus,
                       due: int | None) -> bool:
        """A sleep, wait or invoke step, created once: True when this call created it."""
        return bool(self.tx.exec(
            "insert_step", run_id=self.run_id, id=step.step_id, seq=step.seq, status=status,
            attempts=1, output=None, error=None, started_at=step.started_at, ended_at=due,
            name=step.name, kind=_KIND[type(step)]))


def apply(tx: Tx, lease: Lease, outcomes: list[Outcome], now: int, last: bool) -> Applied:
    """Apply an executor's outcomes in order. `last`: the execution is over, so unless the run
    finished it parks until its earliest pending step is due (at once when none is)."""
    if last and outcomes and type(outcomes[-1]) is RunCompleted and \
            all(type(o) in _BEFORE_COMPLETION for o in outcomes[:-1]):
        return _complete(tx, lease, outcomes, now)
    batch = _Batch(tx, lease.run_id, lifecycle.guard(tx, lease), now)
    for outcome in outcomes:
        if batch.applied.run_status is not None:
            raise ValueError(f"run {lease.run_id}: outcome {outcome!r} after the run finished")
        _apply_one(batch, outcome)
    if last and batch.applied.run_status is None:
        _park(batch)
    return batch.applied


#: What may precede a run's completion in `_complete`, the common end of an execution.
_BEFORE_COMPLETION = (StepCompleted, Logged)


def _complete(tx: Tx, lease: Lease, outcomes: list[Outcome], now: int) -> Applied:
    """`apply` for an execution whose run completed, after only finished steps and log
    lines: its steps are stored in the round trip that finishes the run, and the run's guard
    is part of its finishing statement, not a read of its own. When either refuses (the lease
    is lost, or a step was stored first by another execution), raising rolls back what was
    written."""
    applied = Applied()
    run_id = lease.run_id
    saves: list[tuple[str, dict[str, Any]]] = []
    for outcome in outcomes[:-1]:
        if isinstance(outcome, StepCompleted):
            saves.append(("save_step", _completed_row(run_id, outcome)))
            applied.outputs[outcome.step_id] = outcome.output
        elif isinstance(outcome, Logged):
            _keep_log(tx, run_id, outcome.lines)
    completed = outcomes[-1]
    assert isinstance(completed, RunCompleted)
    if not ingest.announce(tx, lifecycle.finish(tx, run_id, RunStatus.completed,
                                                completed.output, None, now, lease=lease,
                                                before=saves), now):
        lifecycle.refused(tx, lease)
    applied.run_status = RunStatus.completed
    return applied


def completion_in_one(lease: Lease, outcomes: list[Outcome], now: int
                      ) -> dict[str, Any] | None:
    """The parameters of `complete_leased_run` (PostgreSQL: an execution's common end in one
    statement) when `outcomes` are the run's completion after at most one completed step;
    None when they say more. The statement writes only what `_complete` would, and nothing
    when the run needs more (a parent to settle, lifecycle events) or the lease is lost: the
    caller then applies the outcomes the general way."""
    if not outcomes or len(outcomes) > 2:
        return None
    *before, completed = outcomes
    if not isinstance(completed, RunCompleted):
        return None
    step = _NO_STEP
    if before:
        if not isinstance(before[0], StepCompleted):
            return None
        step = _completed_row(lease.run_id, before[0])
    return {**step, **lease.params(), "run_status": RunStatus.completed.value,
            "run_output": completed.output, "run_error": None, "now": now}


#: `complete_leased_run`'s step columns when the run ends without a step to store.
_NO_STEP: dict[str, Any] = dict.fromkeys(
    ("id", "seq", "status", "attempts", "output", "error", "started_at", "ended_at", "name"))


def _stored(tx: Tx, run_id: str, step_id: str) -> StepRow:
    """A step as stored, read back when an outcome found it already settled."""
    return cast(StepRow, tx.one("get_step", run_id=run_id, id=step_id))


def _report_stored(applied: Applied, stored: StepRow) -> None:
    """Answer with what is stored for a step reported again (its first result stands)."""
    if stored["status"] == StepStatus.completed:
        applied.outputs[stored["id"]] = stored["output"]
    elif stored["status"] == StepStatus.failed:
        applied.failed[stored["id"]] = loads(stored["error"] or "{}")
    elif stored["status"] == StepStatus.retrying and stored["ended_at"] is not None:
        applied.retry_at[stored["id"]] = int(stored["ended_at"])


def _completed_row(run_id: str, done: StepCompleted) -> dict[str, Any]:
    return {"run_id": run_id, "id": done.step_id, "seq": done.seq, "status": _COMPLETED,
            "attempts": done.attempt + 1, "output": done.output, "error": None,
            "started_at": done.started_at, "ended_at": done.ended_at, "name": done.name}


def _save_completed(tx: Tx, run_id: str, done: StepCompleted) -> bool:
    """Store a completed step unless a final result is stored already."""
    return tx.one("save_step", **_completed_row(run_id, done)) is not None


def guarded_step(lease: Lease, done: StepCompleted) -> dict[str, Any]:
    """The parameters of `guarded_save_step`, a completed step's whole write mid-execution
    (every step's path: one statement, fenced; `Storage.write_statement`)."""
    return {**_completed_row(lease.run_id, done), **lease.params()}


def why_not_stored(tx: Tx, lease: Lease, step_id: str) -> Applied:
    """After `guarded_save_step` stored nothing: raise if the lease is lost, else answer
    what is stored (a result stored first stands)."""
    lifecycle.guard(tx, lease)  # raises LeaseLost or RunCancelled
    applied = Applied()
    _report_stored(applied, _stored(tx, lease.run_id, step_id))
    return applied


def _apply_one(b: _Batch, outcome: Outcome) -> None:
    tx, run_id, now = b.tx, b.run_id, b.now
    match outcome:
        case StepCompleted():
            if _save_completed(tx, run_id, outcome):
                b.set_retry(0)
                b.applied.outputs[outcome.step_id] = outcome.output
            else:
                b.report_stored(_stored(tx, run_id, outcome.step_id))
        case StepFailed():
            _step_failed(b, outcome)
        case SleepUntil():
            if outcome.until <= now:  # already over: completes at once
                if b.insert_pending(outcome, StepStatus.completed, outcome.started_at):
                    b.set_retry(0)
                    b.applied.outputs[outcome.step_id] = None
                else:
                    b.report_stored(_stored(tx, run_id, outcome.step_id))
            else:
                b.insert_pending(outcome, StepStatus.sleeping, outcome.until)
        case WaitForEvent():
            if b.insert_pending(outcome, StepStatus.waiting, outcome.expires_at):
                _add_wait(b, outcome)
        case WaitForSignal():
            if b.insert_pending(outcome, StepStatus.waiting, outcome.expires_at) and \
                    not waits.add_signal_wait(tx, run_id, outcome.step_id, outcome.signal,
                                              outcome.expires_at, outcome.replace, now):
                lifecycle.settle_step(tx, run_id, outcome.step_id, StepStatus.waiting,
                                      StepStatus.failed, None, {
                                          "name": "Error", "step_id": outcome.step_id,
                                          "message": "Signal conflict; signal wait already "
                                                     "exists for another run"}, now)
        case Invoke():
            if b.insert_pending(outcome, StepStatus.invoking, outcome.expires_at):
                _start_invoked(b, outcome)
        case EventsSent():
            output = dumps({"ids": [e.id for e in outcome.events]}, "ids")
            stored = b.stored_final({
                "id": outcome.step_id, "seq": outcome.seq, "status": StepStatus.completed,
                "attempts": 1, "output": output, "error": None, "started_at": outcome.at,
                "ended_at": outcome.at, "name": None})
            if stored is None:  # the events commit with the step, or neither does
                ingest.ingest_events(tx, outcome.events, now)
                b.applied.outputs[outcome.step_id] = output
            else:
                b.report_stored(stored)
        case RunCompleted():
            ingest.announce(tx, lifecycle.finish(tx, run_id, RunStatus.completed,
                                                 outcome.output, None, now), now)
            b.applied.run_status = RunStatus.completed
        case RunFailed():
            _run_failed(b, outcome)
        case Logged():
            _keep_log(tx, run_id, outcome.lines)


#: Log lines kept per run; past it one line says the log was capped and the rest is dropped.
MAX_LOG_LINES = 1000
#: Characters kept of one log line.
MAX_LOG_CHARS = 4000


def _keep_log(tx: Tx, run_id: str, lines: tuple[LogLine, ...]) -> None:
    row = tx.one("count_run_logs", run_id=run_id)
    seq = int(row["n"]) if row else 0
    for line in lines:
        if seq > MAX_LOG_LINES:
            return
        capped = seq == MAX_LOG_LINES
        message = (f"(log capped at {MAX_LOG_LINES} lines: later lines are not kept)"
                   if capped else storable_text(line.message[:MAX_LOG_CHARS]))
        tx.defer("insert_run_log", run_id=run_id, seq=seq, at=line.at,
                 level="WARNING" if capped else line.level,
                 step_id=None if capped else line.step_id, message=message)
        seq += 1


def _step_failed(b: _Batch, failed: StepFailed) -> None:
    attempts = failed.attempt + 1
    delay = retries.next_delay(b.policy, attempts, retriable=failed.retriable,
                               retry_after_ms=failed.retry_after_ms, retries=failed.retries)
    row: dict[str, object] = {
        "id": failed.step_id, "seq": failed.seq, "attempts": attempts, "output": None,
        "error": dumps(failed.error, "step error"), "started_at": failed.started_at,
        "name": failed.name}
    if delay is None:
        stored = b.stored_final({**row, "status": StepStatus.failed,
                                 "ended_at": failed.ended_at})
        if stored is not None:
            b.report_stored(stored)
            return
        b.applied.failed[failed.step_id] = failed.error
    else:
        retry_at = b.now + delay
        if b.tx.one("save_step", run_id=b.run_id, **row, status=StepStatus.retrying,
                    ended_at=retry_at) is None:
            b.report_stored(_stored(b.tx, b.run_id, failed.step_id))
            return
        b.applied.retry_at[failed.step_id] = retry_at
        b.set_retry(max(b.retry, attempts))
    lifecycle.record_failure(b.tx, b.run_id, failed.step_id, attempts, failed.error,
                             failed.started_at, failed.ended_at)


def _run_failed(b: _Batch, failed: RunFailed) -> None:
    """The body failed: retried as a whole under the policy, or the run fails for good and its
    `on_failure` handler starts in the same transaction."""
    attempts = b.retry + 1
    delay = retries.next_delay(b.policy, attempts, retriable=failed.retriable,
                               retry_after_ms=failed.retry_after_ms)
    if failed.retriable:
        lifecycle.record_failure(b.tx, b.run_id, None, attempts, failed.error, None, b.now)
    if delay is not None:
        b.set_retry(attempts)
        b.body_retry_at = b.now + delay
        return
    fail_run(b.tx, b.run, b.definition, failed.error, b.now)
    b.applied.run_status = RunStatus.failed


def fail_run(tx: Tx, run: RunRow, definition: FunctionDefinition | None, error: ErrorInfo,
             now: int) -> None:
    """The run fails for good; its `on_failure` handler starts in the same transaction."""
    ingest.announce(tx, lifecycle.finish(tx, run["id"], RunStatus.failed, None, error, now),
                    now)
    handler = definition.on_failure if definition is not None else None
    if handler is not None:
        announced: list[StoredEvent] = []
        flow_control.create_run(tx, run["app_id"], handler, run["event_id"], now, now,
                                origin_run_id=run["id"], announced=announced)
        ingest.ingest_events(tx, announced, now)


def _add_wait(b: _Batch, wait: WaitForEvent) -> None:
    trigger = flow_control.event_for(b.tx, b.run["event_id"]) if b.run["event_id"] else None
    problem = None
    key = None
    try:
        if wait.match is not None:
            key = waits.match_of(trigger or {}, wait.match)
            if key is None:
                problem = (f"the run's event has no "
                           f"{'.'.join(expressions.field_path(wait.match))} to match on")
        if wait.if_ is not None:
            expressions.compile_expression(wait.if_)
    except expressions.ExpressionError as exc:
        problem = str(exc)
    if problem is not None:  # can never match: the step fails for good
        error: ErrorInfo = {"name": "NonRetriableError", "step_id": wait.step_id,
                            "message": f"wait_for_event({wait.step_id!r}): {problem}"}
        lifecycle.settle_step(b.tx, b.run_id, wait.step_id, StepStatus.waiting,
                              StepStatus.failed, None, error, b.now)
        return
    waits.add_step_wait(b.tx, b.run_id, wait.step_id, wait.event, key, wait.if_, trigger,
                        wait.expires_at, b.now)


def _start_invoked(b: _Batch, invoke: Invoke) -> None:
    tx, now = b.tx, b.now
    found = definitions.find(tx, b.run["app_id"], invoke.function_id)
    if found is None:
        error: ErrorInfo = {"name": "InvokeFailed", "step_id": invoke.step_id,
                            "message": f"no function {invoke.function_id!r} is registered (in "
                                       f"app {b.run['app_id']!r} or any other)"}
        if b.definition.url is not None:  # an SDK run: the error Inngest gives, which it expects
            error = {"name": "Error", "step_id": invoke.step_id,
                     "message": f"could not find function with ID: {invoke.function_id}"}
        lifecycle.settle_step(tx, b.run_id, invoke.step_id, StepStatus.invoking,
                              StepStatus.failed, None, error, now)
        return
    app_id, definition = found
    name, data = "stepwise/function.invoked", invoke.data
    if definition.url is not None:  # an SDK function reads Inngest's invocation event
        name = sdk_events.INVOKED
        data = sdk_events.invoked_data(invoke.data, definition.id, b.run["function_id"],
                                       f"{b.run_id}.{invoke.step_id}")
    event = StoredEvent(id=f"invoke:{b.run_id}:{invoke.step_id}", name=name, data=data,
                        ts=now, trace=invoke.trace, meta=invoke.meta)
    if tx.one("insert_event", id=event.id, name=event.name, data=event.data, ts=event.ts,
              now=now, trace=event.trace, meta=event.meta) is None:
        return  # started already
    announced: list[StoredEvent] = []
    child = lifecycle.get_run(tx, flow_control.create_run(
        tx, app_id, definition.id, event.id, now, now, flow=definition.flow,
        parent_run_id=b.run_id, parent_step_id=invoke.step_id, announced=announced,
        event=event))
    ingest.ingest_events(tx, announced, now)
    if child is not None and child["status"] in TERMINAL_RUN:
        # Skipped, or an idempotent run already done: the step settles at once.
        ok = child["status"] == RunStatus.completed
        lifecycle.settle_step(
            tx, b.run_id, invoke.step_id, StepStatus.invoking,
            StepStatus.completed if ok else StepStatus.failed,
            child["output"] if ok else None,
            None if ok else (loads(child["error"]) if child["error"] else {
                "name": "InvokeFailed",
                "message": f"invoked run {child['id']} is {child['status']}"}), now)


def _park(b: _Batch) -> None:
    """The execution is over and the run is unfinished: park it until its earliest pending
    step (a retry, a sleep's end, a wait's or invoke's timeout) is due."""
    due: list[int] = []
    status: RunStatus | None = None
    for row in b.tx.all("pending_steps", run_id=b.run_id):
        due.append(lifecycle.FOREVER if row["ended_at"] is None else int(row["ended_at"]))
        status = _most_urgent(status, _PARKED_AS[StepStatus(row["status"])])
    if b.body_retry_at is not None:
        due.append(b.body_retry_at)
        status = RunStatus.queued
    parked_as = status or RunStatus.queued
    lifecycle.park(b.tx, b.run_id, min(due, default=b.now), parked_as, b.now)
    b.applied.run_status = parked_as


def _most_urgent(current: RunStatus | None, candidate: RunStatus) -> RunStatus:
    if current is None or _RANK[candidate] > _RANK[current]:
        return candidate
    return current
