"""The engine's shortcuts store what its general path stores.

`Engine` writes the common cases in fewer statements: a step mid-execution in one fenced
statement (`guarded_save_step`), and on PostgreSQL an execution's end in one
(`complete_leased_run`), a lease in one (`lease_plain`) and an ingest in one
(`ingest_routed`). Their SQL shares its rules with the general statements (queries.sql
fragments); this property test checks the result: random executions (steps that complete or
fail, sleeps, log lines, the run's end or failure) are applied to one run through `Engine`
(the shortcuts where they fit) and to a twin run through the general operations
(`ingest.ingest_events` without routes, `leasing.lease` without the plain lease,
`runs.apply`), on both backends; what each answers and everything stored about the two
runs must be the same.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stepwise.clock import ManualClock
from stepwise.definition import EventTrigger, FunctionDefinition, RetryPolicy
from stepwise.engine import Engine, Lease, ingest, leasing, retries, runs
from stepwise.engine.outcomes import (
    Logged,
    LogLine,
    Outcome,
    RunCompleted,
    RunFailed,
    SleepUntil,
    StepCompleted,
    StepFailed,
)
from stepwise.errors import ExecutionStopped
from stepwise.events import StoredEvent
from stepwise.storage import Tx, open_storage

APP = "twins"
#: The twins' functions (alike but for their id, so each path leases its own run).
SHORTCUT, GENERAL = "by_shortcut", "by_general_path"
LEASE_MS = 60_000
ERROR = {"name": "ValueError", "message": "nope"}
#: The tables that hold a run's state, and the columns that name the run itself.
TABLES = ("runs", "steps", "queue", "failures", "run_logs", "waits", "queue_keys")
OWN_IDS = {"id", "run_id", "event_id", "function_id"}

_examples = itertools.count()


@pytest.fixture
async def engine(db: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Engine]:
    # Backoff without its jitter, so the twins' retries are due at the same time.
    monkeypatch.setattr(retries, "backoff_ms", lambda policy, retry: policy.backoff_max_ms)
    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage, ManualClock())
    await engine.register(APP, [FunctionDefinition(
        function, APP, (EventTrigger(f"go-{function}"),),
        RetryPolicy(2, backoff_initial_ms=1000, backoff_max_ms=1000))
        for function in (SHORTCUT, GENERAL)])
    yield engine
    await storage.close()


# An execution's outcomes, as batches reported one after another; times are offsets (ms)
# from the execution's start, made absolute when applied.
_step_ids = st.sampled_from(["a", "b", "c"])
_outcome = st.one_of(
    st.builds(lambda s, o, n: ("done", s, o, n), _step_ids, st.sampled_from(['1', '"x"', "null"]),
              st.integers(0, 2)),
    st.builds(lambda s, r, n: ("fail", s, r, n), _step_ids, st.booleans(), st.integers(0, 3)),
    st.builds(lambda s, d: ("sleep", s, d, 0), _step_ids, st.sampled_from([-5, 0, 500])),
    st.builds(lambda m: ("log", m, 0, 0), st.sampled_from(["hello", "again"])),
)
_end = st.sampled_from([None, ("complete",), ("complete",), ("fail_body", True),
                        ("fail_body", False)])
#: Batches reported mid-execution, then the last batch: outcomes and the run's end, if any.
_execution = st.tuples(st.lists(st.lists(_outcome, min_size=1, max_size=3), max_size=3),
                       st.lists(_outcome, max_size=2), _end)


def _outcomes(batch: list[tuple[Any, ...]], t: int) -> list[Outcome]:
    found: list[Outcome] = []
    for kind, a, b, c in batch:
        if kind == "done":
            found.append(StepCompleted(a, ord(a), b, t, t + 1, attempt=c))
        elif kind == "fail":
            found.append(StepFailed(a, ord(a), ERROR, t, t + 1, attempt=c, retriable=b))
        elif kind == "sleep":
            found.append(SleepUntil(a, ord(a), t + b, t))
        else:
            found.append(Logged((LogLine(t, "INFO", None, a),)))
    return found


def _end_outcomes(end: tuple[Any, ...] | None) -> list[Outcome]:
    if end is None:
        return []
    if end[0] == "complete":
        return [RunCompleted('"done"')]
    return [RunFailed(ERROR, retriable=end[1])]


async def _answer(call: Any) -> Any:
    """What an apply answered: its `Applied`, or the kind of refusal."""
    try:
        return await call
    except (ExecutionStopped, ValueError) as exc:
        return type(exc).__name__


async def _state(engine: Engine, run_id: str) -> dict[str, list[dict[str, Any]]]:
    def read(tx: Tx) -> dict[str, list[dict[str, Any]]]:
        column = {"runs": "id"}
        return {table: [{k: v for k, v in row.items() if k not in OWN_IDS} for row in tx.raw_all(
            f"SELECT * FROM {table} WHERE {column.get(table, 'run_id')} = :run_id ORDER BY 2, 3",
            {"run_id": run_id})] for table in TABLES}

    return await engine.storage.read(read)


async def _take(engine: Engine, general: bool) -> Lease | None:
    """Lease the twin's run: by `Engine` (its plain lease where it fits), or the general way."""
    now = engine.clock.now_ms()
    if general:
        found = await engine.storage.write(leasing.lease, APP, [GENERAL], "A", now,
                                           now + LEASE_MS, 1, True, False)
        leases = found.leases
    else:
        leases = (await engine.lease_runs(APP, [SHORTCUT], "A", 1, LEASE_MS)).leases
    return leases[0] if leases else None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(executions=st.lists(_execution, min_size=1, max_size=4))
# The common end: the last step stored with the run's completion (`complete_leased_run`).
@example(executions=[([], [("done", "a", "1", 0)], ("complete",))])
# A completed step reported again while the run counts retries: not stored, so the count
# stays (SQLite's `guarded_save_step` once reset it).
@example(executions=[([[("done", "a", "1", 0)], [("fail", "b", True, 0)],
                       [("done", "a", "1", 0)]], [], ("fail_body", True))])
async def test_shortcuts_store_what_the_general_path_stores(
        engine: Engine, executions: list[Any]) -> None:
    example = next(_examples)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    event = StoredEvent(f"e{example}-s", f"go-{SHORTCUT}", '{"n": 1}', clock.now_ms())
    twin_event = StoredEvent(f"e{example}-g", f"go-{GENERAL}", '{"n": 1}', clock.now_ms())
    await engine.ingest([event])
    await engine.storage.write(ingest.ingest_events, [twin_event], clock.now_ms(), None)
    shortcut = await _take(engine, general=False)
    general = await _take(engine, general=True)
    assert shortcut is not None and general is not None
    for batches, last_batch, end in executions:
        t = clock.now_ms()
        plan = [(_outcomes(batch, t), False) for batch in batches]
        plan.append((_outcomes(last_batch, t) + _end_outcomes(end), True))
        for outcomes, last in plan:
            fast = await _answer(engine.apply(shortcut, outcomes, last=last))
            slow = await _answer(engine.storage.write(runs.apply, general, outcomes,
                                                      clock.now_ms(), last))
            assert fast == slow, (executions, outcomes)
        fast_state, slow_state = (await _state(engine, shortcut.run_id),
                                  await _state(engine, general.run_id))
        assert fast_state == slow_state, executions
        clock.advance(3600)  # every retry and sleep is due
        shortcut = await _take(engine, general=False)
        general = await _take(engine, general=True)
        assert (shortcut is None) == (general is None)
        if shortcut is None or general is None:
            break  # both ended
