"""Leasing and timers: which runs a worker takes next, cron ticks, start/finish deadlines,
and steps whose time came (a sleep ended, a wait or an invoke timed out).

One transaction takes up to `limit` due runs, highest priority first, within their
concurrency limits; every worker and server meets here (see `lease_candidates` and
`lock_key` in `queries.sql`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .. import schedules
from ..errors import ErrorInfo
from ..events import StoredEvent
from ..payloads import dumps
from ..status import TERMINAL_RUN, TIMED_STEP, StepStatus
from ..storage import Tx
from . import definitions, flow_control, ingest, lifecycle, runs
from .outcomes import Lease

#: The event of an SDK function's cron run, as Inngest names it.
SDK_TIMER = "inngest/scheduled.timer"
#: A run whose executions lose their worker this many times in a row (crash, kill, a frozen
#: process: the lease expired) fails instead of being taken over again.
MAX_TAKEOVERS = 5


@dataclass
class Leased:
    """What one lease took."""

    leases: list[Lease]  # each run taken, with its take's epoch
    taken_over: int  # how many of them were taken over from an expired lease
    first_starts: list[str]  # the function of each run that starts for the first time
    states: list[runs.RunState]  # what executing each needs (`with_state`)
    plain: bool | None = None  # whether `lease_plain` could take them (None: not tried)
    #: What `next_due` would answer after this lease, when it was read with it.
    next_due: int | None = None
    next_due_known: bool = False


def lease(tx: Tx, app_id: str, functions: list[str], owner: str, now: int, until: int, limit: int,
          with_state: bool = False, try_plain: bool = True) -> Leased:
    """Take up to `limit` due runs of the app's `functions` (those the worker serves) for
    `owner` until `until`, and (`with_state`) read what executing each needs in the same
    round trip as the take. Where statements cost round trips, `try_plain` first tries the
    common case in one (`lease_plain`)."""
    if with_state and try_plain and tx.round_trips:
        _, (found,) = tx.commit_with([
            ("lease_plan", {}),
            ("lease_plain", {"app_id": app_id, "functions": functions, "now": now,
                             "limit": limit, "window": limit, "owner": owner,
                             "until": until})])
        if found["plain"]:
            return _plain_lease(tx, owner, found, now, limit)
        return replace(lease(tx, app_id, functions, owner, now, until, limit, with_state, False),
                       plain=False)
    picked, taken_over = _pick(tx, app_id, functions, now, limit)
    if not picked:
        return Leased([], taken_over, [], [])
    ids: dict[str, Any] = {"ids": picked}
    # Independent statements over the picked runs, sent together: the take, the start
    # (answering the runs), and what executing them needs, or else only the sleeps, waits
    # and invokes whose time came (`with_state` finds those among the steps).
    reads = [(query, ids) for query in runs.STATE_READS] if with_state else [
        ("due_timed_steps", {**ids, "now": now})]
    # The take commits with them: what follows (settling due steps, reading the origin
    # of an on_failure run) only concerns runs leased to `owner` by then.
    _, started, *read = tx.commit_with([
        ("take", {**ids, "owner": owner, "until": until}),
        ("start_runs", {**ids, "now": now}), *reads])
    epochs = {r["id"]: int(r["lease_epoch"]) for r in started}
    leased: list[runs.RunState] = []
    if with_state:
        events, steps = read
        leased = _started_states(tx, owner, picked, now, started, events, steps)
    else:
        (due,) = read
        settle_due_steps(tx, picked, now, due)
    return Leased([Lease(run_id, owner, epochs[run_id]) for run_id in picked], taken_over,
                  [r["function_id"] for r in started if r["first_start"]], leased)


def _pick(tx: Tx, app_id: str, functions: list[str], now: int, limit: int
          ) -> tuple[list[str], int]:
    """The due runs to take, in order, within their concurrency limits (after firing due cron
    ticks and deadlines), and how many of them are takeovers of an expired lease."""
    # Due cron ticks, due deadlines and the candidates, read together (one round trip on
    # PostgreSQL); the candidates are read again only when a tick or a deadline changed them.
    reads = [("lease_plan", {}), ("due_schedules", {"app_id": app_id, "now": now}),
             ("due_deadlines", {"app_id": app_id, "now": now}),
             ("lease_candidates", {"app_id": app_id, "functions": functions, "now": now,
                                   "window": limit * 4 + 32})]
    _, ticks, deadlines, candidates = tx.each(reads)
    if ticks or deadlines:
        fire_schedules(tx, app_id, now, ticks)
        expire_deadlines(tx, app_id, now, deadlines)
        (candidates,) = tx.each(reads[3:])
    keys = {c["run_id"]: tx.all("run_keys", run_id=c["run_id"]) for c in candidates if c["keyed"]}
    inflight = _inflight(tx, {k["key"] for rows in keys.values() for k in rows}, now)
    picked: list[str] = []
    taken_over = 0
    for candidate in candidates:
        run_keys = keys.get(candidate["run_id"], [])
        if any(inflight[k["key"]] >= k["lim"] for k in run_keys):
            continue  # at its limit: stays queued, and a finishing run wakes the workers
        if candidate["lease_owner"] is not None:  # its lease expired: a takeover
            taken_over += 1
            if not _take_over(tx, candidate["run_id"], now):
                continue  # failed instead: it lost its worker too many times
        for k in run_keys:
            inflight[k["key"]] += 1
        picked.append(candidate["run_id"])
        if len(picked) == limit:
            break
    return picked, taken_over


def _inflight(tx: Tx, keys: set[str], now: int) -> dict[str, int]:
    """How many runs hold each concurrency key now, each key locked for this transaction."""
    inflight: dict[str, int] = {}
    for key in sorted(keys):
        tx.one("lock_key", key=key)  # PostgreSQL: one leaser per key at a time
        row = tx.one("inflight", key=key, now=now)
        inflight[key] = int(row["n"]) if row else 0
    return inflight


def _plain_lease(tx: Tx, owner: str, found: dict[str, Any], now: int, limit: int) -> Leased:
    """The runs `lease_plain` took (committed), with their states."""
    picked: list[str] = found["ids"] or []
    started: list[dict[str, Any]] = found["runs"] or []
    states = _started_states(tx, owner, picked, now, started, found["events"] or [],
                             found["steps"] or [])
    leases = [s.lease for s in states if s.lease is not None]
    return Leased(leases, 0, [r["function_id"] for r in started if r["first_start"]], states,
                  plain=True, next_due=None if found["next_due"] is None else
                  int(found["next_due"]), next_due_known=len(picked) < limit)  # else not read


def _started_states(tx: Tx, owner: str, picked: list[str], now: int,
                    started: list[dict[str, Any]],
                    events: list[dict[str, Any]], steps: list[dict[str, Any]]
                    ) -> list[runs.RunState]:
    """The just-leased runs' states, in lease order, from what the lease read: their sleeps,
    waits and invokes whose time came (found among `steps`) settled first."""
    due = [s for s in steps if s["status"] in TIMED_STEP
           and s["ended_at"] is not None and s["ended_at"] <= now]
    settle_due_steps(tx, picked, now, due)
    if due:  # the steps just settled: read them again, as the executor must see them
        (steps,) = tx.commit_with([("steps_of_runs", {"ids": picked})])
    order = {run_id: i for i, run_id in enumerate(picked)}
    return runs.states(tx, owner, sorted(started, key=lambda r: order[r["id"]]), events, steps)


def _take_over(tx: Tx, run_id: str, now: int) -> bool:
    """A run whose lease expired: count the takeover; past the limit, fail the run."""
    row = tx.one("count_takeover", run_id=run_id)
    count = int(row["takeovers"]) if row is not None else 0
    if count <= MAX_TAKEOVERS:
        return True
    run = lifecycle.get_run(tx, run_id)
    if run is None:
        return False
    error: ErrorInfo = {"name": "WorkerLost", "message": (
        f"the run's executions lost their worker {count} times in a row (the worker crashed, "
        "was killed, or froze: its lease expired); it is not taken over again. Look for code "
        "that exhausts memory, crashes the process, or blocks it (e.g. a long call that never "
        "returns to the event loop).")}
    lifecycle.record_failure(tx, run_id, None, run["retry"] + 1, error, None, now)
    runs.fail_run(tx, run, definitions.get(tx, run["app_id"], run["function_id"]), error, now)
    return False


def settle_due_steps(tx: Tx, ids: list[str], now: int,
                     due: list[dict[str, Any]] | None = None) -> None:
    """Before the runs `ids` execute: sleeps that ended complete, waits that
    timed out complete with no event, invokes that timed out fail. The executor then sees
    only results. `due`: those steps, when the caller read them already."""
    if due is None:
        due = tx.all("due_timed_steps", ids=ids, now=now)
    # Deferred: they go out together with what the caller sends next (the steps read again,
    # or the COMMIT), one round trip for them all instead of one each.
    for row in due:
        status, run_id, step_id = row["status"], row["run_id"], row["id"]
        if status == StepStatus.sleeping:
            tx.defer("resolve_step", run_id=run_id, id=step_id, status=StepStatus.completed,
                     output=None, error=None, now=row["ended_at"], expected=status)
        elif status == StepStatus.waiting:
            tx.defer("delete_wait", run_id=run_id, step_id=step_id)
            tx.defer("resolve_step", run_id=run_id, id=step_id, status=StepStatus.completed,
                     output=None, error=None, now=now, expected=status)
        else:
            error: ErrorInfo = {"name": "InvokeTimeout", "step_id": step_id, "message": (
                "the invoked run did not finish before the timeout")}
            tx.defer("resolve_step", run_id=run_id, id=step_id, status=StepStatus.failed,
                     output=None, error=dumps(error, "error"), now=now, expected=status)


def renew_leases(tx: Tx, leases: list[Lease], until: int) -> None:
    for lease in leases:  # sent together, with the COMMIT
        tx.defer("renew_lease", **lease.params(), until=until)


def next_due(tx: Tx, app_id: str) -> int | None:
    """When this app next has something to do: a queued run, an expiring lease, a cron tick
    (four independent reads, one round trip on PostgreSQL)."""
    key = {"app_id": app_id}
    rows = tx.each([("next_due", key), ("next_lease_expiry", key), ("next_schedule", key),
                    ("next_deadline", key)])
    times = [found[0]["due"] for found in rows if found and found[0]["due"] is not None]
    return int(min(times)) if times else None


def fire_schedules(tx: Tx, app_id: str, now: int,
                   due: list[dict[str, Any]] | None = None) -> int:
    """Start one run per due cron tick (the most recent one when several were missed).
    `due`: the due schedules, when the caller read them already."""
    fired = 0
    if due is None:
        due = tx.all("due_schedules", app_id=app_id, now=now)
    for row in due:
        cron, tz = row["cron"], row["tz"]
        tick = max(int(row["next_at"]), schedules.latest_tick(cron, tz, now))
        definition = definitions.get(tx, app_id, row["function_id"])
        if definition is not None and definition.url is not None:  # an SDK function
            name, data = SDK_TIMER, {"cron": cron if tz == "UTC" else f"TZ={tz} {cron}",
                                     "scheduledAt": _iso(tick), "fireAt": _iso(now)}
        else:
            name, data = "stepwise/cron", {"cron": cron, "tz": tz, "tick": tick}
        event = StoredEvent(id=f"cron:{app_id}:{row['function_id']}:{tick}", name=name,
                            data=dumps(data, "cron event"), ts=tick)
        if tx.one("insert_event", id=event.id, name=event.name, data=event.data, ts=event.ts,
                  now=now, trace=None, meta=None) is not None:
            announced: list[StoredEvent] = []
            flow_control.create_run(tx, app_id, row["function_id"], event.id, now, now,
                                    announced=announced, event=event)
            ingest.ingest_events(tx, announced, now)
            fired += 1
        tx.exec("set_schedule_next", app_id=app_id, function_id=row["function_id"], cron=cron,
                tz=tz, next_at=schedules.next_tick(cron, tz, now))
    return fired


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def expire_deadlines(tx: Tx, app_id: str, now: int,
                     due: list[dict[str, Any]] | None = None) -> None:
    """Cancel runs past their start or finish timeout (`due`: when the caller read them)."""
    if due is None:
        due = tx.all("due_deadlines", app_id=app_id, now=now)
    for row in due:
        late = row["status"] not in TERMINAL_RUN and (
            row["kind"] == "finish" or row["started_at"] is None)
        tx.exec("delete_deadline", run_id=row["run_id"], kind=row["kind"])
        if late:
            ingest.announce(tx, lifecycle.cancel(tx, row["run_id"], now,
                                                 reason=f"{row['kind']} timeout"), now)
