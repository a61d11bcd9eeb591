"""Run state transitions shared by every engine operation: fencing, waking, parking, finishing.

A run's status changes here, each transition by one function (and one SQL statement or
fragment of queries.sql), so the allowed transitions can be read in one place:

- created queued (`flow_control.create_run`, many at once `flow_control.PlainRuns`), or
  `skip`ped (over a rate limit: it never starts);
- taken: queued | sleeping | waiting -> running, with a new lease epoch (the `run_start`
  fragment, written by the lease in `leasing.lease`: a take is part of choosing runs);
- `park`: running -> queued | sleeping | waiting; `release`: running -> queued; `wake`:
  sleeping | waiting -> queued;
- `finish` (and `cancel`): -> completed | failed | cancelled (the `run_end` fragment; also
  PostgreSQL's one-statement completion, `complete_leased_run`, sent by `Engine`);
- `replay`: failed | cancelled | skipped -> queued.

`tests/unit/test_transitions.py` holds the engine to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from ..errors import ErrorInfo, LeaseLost, RunCancelled
from ..events import StoredEvent
from ..payloads import dumps
from ..status import TERMINAL_RUN, RunStatus, StepStatus
from ..storage import Tx, search
from ..storage.rows import RunRow
from . import sdk_events
from .outcomes import Lease

FOREVER = 253_402_300_799_000  # 9999-12-31: "no timeout" as a time


def guard(tx: Tx, lease: Lease) -> int:
    """Fencing: only the holder of the run's lease, by the take it executes, may write its
    outcomes (`lease_held` in queries.sql; on PostgreSQL the run's queue row stays locked
    until the transaction ends). Answers the run's retry count."""
    row = tx.one("run_guard", **lease.params())
    if row is None:
        refused(tx, lease)
    return int(row["retry"])


def refused(tx: Tx, lease: Lease) -> NoReturn:
    """Raise why a fenced write of `lease` was refused: `RunCancelled` or `LeaseLost`."""
    run_id = lease.run_id
    row = tx.one("run_fence", run_id=run_id)
    if row is None:
        raise LeaseLost(f"run {run_id} no longer exists")
    if row["status"] == RunStatus.cancelled:
        raise RunCancelled(run_id)
    if row["lease_owner"] != lease.owner:
        raise LeaseLost(f"run {run_id} is no longer leased by {lease.owner}")
    raise LeaseLost(f"run {run_id}: this execution's take ({lease.epoch}) is stale: the run "
                    f"was taken again (take {row['lease_epoch']})")


def get_run(tx: Tx, run_id: str) -> RunRow | None:
    return cast(RunRow | None, tx.one("get_run", run_id=run_id))


def wake(tx: Tx, run_id: str, now: int) -> None:
    """Make a parked run available now; if it is executing, it comes back at once after."""
    tx.exec("nudge", run_id=run_id, now=now)
    tx.exec("wake_run_status", run_id=run_id)


def park(tx: Tx, run_id: str, available_at: int, status: RunStatus, now: int) -> None:
    """Give up the lease; the run is leased again at `available_at` (or at once if something
    woke it while it executed)."""
    tx.exec("park", run_id=run_id, available_at=available_at, now=now)
    tx.exec("set_run_status", run_id=run_id, status=status)


def release(tx: Tx, lease: Lease, available_at: int) -> None:
    """Give a leased run back untouched (e.g. this worker does not know its function)."""
    guard(tx, lease)
    tx.exec("requeue", run_id=lease.run_id, available_at=available_at)
    tx.exec("set_run_status", run_id=lease.run_id, status=RunStatus.queued)


def replay(tx: Tx, run: RunRow, now: int) -> None:
    """A finished run (failed, cancelled, skipped) starts again, queued now: its completed
    steps keep their results, its failed or pending ones are forgotten."""
    tx.exec("replay_run", run_id=run["id"])
    tx.exec("delete_failed_steps", run_id=run["id"])
    tx.exec("enqueue", run_id=run["id"], app_id=run["app_id"],
            function_id=run["function_id"], available_at=now, priority=0)


def skip(tx: Tx, run_id: str, app_id: str, function_id: str, event_id: str | None,
         error: ErrorInfo, now: int, terms: list[str]) -> None:
    """A run recorded as skipped (over a rate limit): it never starts. `terms`: its event's
    search terms (its error's are added)."""
    tx.exec("insert_skipped_run", id=run_id, app_id=app_id, function_id=function_id,
            event_id=event_id, now=now, error=dumps(error, "error"))
    tx.defer("insert_run_terms", run_terms=search.pairs(
        run_id, [*terms, *search.error_terms(error)]))


def record_failure(tx: Tx, run_id: str, step_id: str | None, attempt: int, error: ErrorInfo,
                   started_at: int | None, ended_at: int) -> None:
    """Keep a failed attempt (of a step, or of the body when `step_id` is None); the run is
    found by its error's words from now on."""
    tx.exec("insert_failure", run_id=run_id, step_id=step_id, attempt=attempt,
            error=dumps(error, "error"), started_at=started_at, ended_at=ended_at)
    _index_error(tx, run_id, error)


def _index_error(tx: Tx, run_id: str, error: ErrorInfo | None) -> None:
    """The words of a run's error in the search index (`storage.search`)."""
    terms = search.error_terms(error) if error is not None else []
    if terms:
        tx.defer("insert_run_terms", run_terms=search.pairs(run_id, terms))


@dataclass
class Ended:
    """A run's end, written. `events`: what it announces (an SDK function's lifecycle events),
    which the caller ingests in the same transaction: ingesting is above this module, since
    an event may in turn end runs (`cancel_on`)."""

    events: list[StoredEvent] = field(default_factory=list)


def finish(tx: Tx, run_id: str, status: RunStatus, output: str | None, error: ErrorInfo | None,
           now: int, lease: Lease | None = None,
           before: list[tuple[str, dict[str, Any]]] | None = None) -> Ended | None:
    """A run reached a final status: drop everything that could still schedule it, and hand
    its result to the run that invoked it. With `lease`, only while that take holds it:
    None when it does not (the caller must then raise, rolling back what was written).
    `before`: the caller's statements to send first, in the same round trip; each must answer
    a row, or this raises `LeaseLost` (a step of the caller's was stored first by another
    execution: the caller computed from a result that is not the stored one)."""
    # Independent statements, sent together: the end (fenced, when the caller executes the
    # run), the function's definition (is it an SDK's?), and dropping what could still
    # schedule the run (which wakes the workers when it frees a concurrency slot).
    key = {"run_id": run_id}
    end = {**key, "run_status": status, "run_output": output, "now": now,
           "run_error": None if error is None else dumps(error, "error")}
    *answered, finished, definition, _ = tx.each([
        *(before or ()),
        ("finish_run", end) if lease is None else ("finish_leased_run",
                                                   {**end, **lease.params()}),
        ("definition_of_run", key), ("finish_cleanup", key)])
    if not finished:
        return None
    if not all(answered):
        raise LeaseLost(f"run {run_id}: a step was stored by another execution")
    _index_error(tx, run_id, error)
    run = cast(RunRow, finished[0])
    ended = Ended()
    if definition and definition[0]["sdk"]:
        ended.events = sdk_events.end_events(tx, run, status, output, error, now)
    if not run["parent_run_id"]:
        return ended
    if status == RunStatus.cancelled:
        status, error = RunStatus.failed, {"name": "RunCancelled",
                                           "message": f"invoked run {run_id} was cancelled"}
    settle_step(tx, run["parent_run_id"], str(run["parent_step_id"]), StepStatus.invoking,
                StepStatus(status), output, error, now)
    return ended


def settle_step(tx: Tx, run_id: str, step_id: str, expected: StepStatus, status: StepStatus,
                output: str | None, error: ErrorInfo | None, now: int) -> bool:
    """Resolve a pending step (a wait got its event, an invoked run ended) and wake its run;
    False when something else resolved it first."""
    if not tx.exec("resolve_step", run_id=run_id, id=step_id, status=status, output=output,
                   error=None if error is None else dumps(error, "error"), now=now,
                   expected=expected):
        return False
    wake(tx, run_id, now)
    return True


def cancel(tx: Tx, run_id: str, now: int, reason: str | None = None) -> Ended | None:
    """Cancel an unfinished run (None: it is not); an executing one stops at its next step
    boundary."""
    run = get_run(tx, run_id)
    if run is None or run["status"] in TERMINAL_RUN:
        return None
    error: ErrorInfo | None = None if reason is None else {
        "name": "RunCancelled", "message": f"cancelled: {reason}"}
    return finish(tx, run_id, RunStatus.cancelled, None, error, now)
