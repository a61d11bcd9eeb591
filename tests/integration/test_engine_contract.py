"""The engine's contract, driven directly with outcomes on both backends: fencing, results
stored once, idempotent outcomes, the status transitions allowed and refused, the stored
retry policy, expiry of waits and invokes, and wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.integration.leases import apply, held, lease_ids

from stepwise.clock import ManualClock
from stepwise.definition import CronTrigger, EventTrigger, FunctionDefinition, RetryPolicy
from stepwise.engine import Conflict, Engine, NotFound
from stepwise.engine.outcomes import (
    EventsSent,
    Invoke,
    RunCompleted,
    RunFailed,
    SleepUntil,
    StepCompleted,
    StepFailed,
    WaitForEvent,
)
from stepwise.errors import ErrorInfo, LeaseLost, RunCancelled
from stepwise.events import StoredEvent
from stepwise.flow import Concurrency, FlowOptions
from stepwise.payloads import loads
from stepwise.storage import Tx, open_storage

APP = "contract"
FUNCTIONS = ["f", "g"]
LEASE_MS = 1000
ERROR: ErrorInfo = {"name": "ValueError", "message": "nope"}


def _definition(function_id: str, event: str, retries: int) -> FunctionDefinition:
    return FunctionDefinition(function_id, APP, (EventTrigger(event),),
                              RetryPolicy(retries, backoff_initial_ms=1000, backoff_max_ms=1000))


@pytest.fixture
async def engine(db: str) -> AsyncIterator[Engine]:
    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage, ManualClock())
    await engine.register(APP, [_definition("f", "go", retries=2),
                                _definition("g", "go-g", retries=0)])
    yield engine
    await storage.close()


def now(engine: Engine) -> int:
    return engine.clock.now_ms()


def done(engine: Engine, step_id: str, seq: int, output: str) -> StepCompleted:
    return StepCompleted(step_id, seq, output, now(engine), now(engine))


async def start_run(engine: Engine, owner: str = "A", event_id: str = "e1") -> str:
    await engine.ingest([StoredEvent(event_id, "go", '{"user": 1}', now(engine))])
    leased = await lease_ids(engine, APP, FUNCTIONS, owner, 10, LEASE_MS)
    assert len(leased) == 1
    return leased[0]


async def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    def read(tx: Tx) -> dict[str, list[dict[str, Any]]]:
        return {table: tx.raw_all(f"SELECT * FROM {table} ORDER BY 1, 2", {}) for table in
                ("runs", "steps", "queue", "waits", "failures", "events", "queue_keys")}

    return await engine.storage.read(read)


async def status(engine: Engine, run_id: str) -> str:
    return (await engine.get_run(run_id))["status"]


async def test_a_stale_lease_holder_is_refused_and_changes_nothing(engine: Engine) -> None:
    run_id = await start_run(engine, "A")
    engine.clock.advance(2)  # A stopped renewing; its lease expired
    assert await lease_ids(engine, APP, FUNCTIONS, "B", 10, LEASE_MS) == [run_id]
    before = await snapshot(engine)
    t = now(engine)
    for outcomes, last in (([done(engine, "s", 0, "1")], False),
                           ([SleepUntil("s", 0, t + 60_000, t)], True),
                           ([StepFailed("s", 0, ERROR, t, t)], False),
                           ([RunCompleted("1")], True),
                           ([done(engine, "s", 0, "1"), RunCompleted("1")], True)):
        with pytest.raises(LeaseLost):
            await apply(engine, run_id, "A", list(outcomes), last=last)
        assert await snapshot(engine) == before
    applied = await apply(engine, run_id, "B", [done(engine, "s", 0, "2")], last=False)
    assert applied.outputs == {"s": "2"}


async def test_a_stale_take_writes_nothing_even_for_the_worker_that_took_it_again(
        engine: Engine) -> None:
    """Lease tokens: the same worker takes its own expired run again; the execution of its
    first take (still running somewhere in that worker) is refused by every write, ending
    the run included, and changes nothing; the new take writes."""
    await engine.ingest([StoredEvent("e1", "go", '{"user": 1}', now(engine))])
    (stale,) = await engine.lease(APP, FUNCTIONS, "A", 10, LEASE_MS)
    engine.clock.advance(2)  # its lease expired: the same worker takes the run again
    (fresh,) = await engine.lease(APP, FUNCTIONS, "A", 10, LEASE_MS)
    assert (fresh.run_id, fresh.owner) == (stale.run_id, stale.owner)
    assert fresh.epoch == stale.epoch + 1
    before = await snapshot(engine)
    t = now(engine)
    for outcomes, last in (([done(engine, "s", 0, "1")], False),
                           ([done(engine, "s", 0, "1"), done(engine, "t", 1, "1")], False),
                           ([SleepUntil("s", 0, t + 60_000, t)], True),
                           ([StepFailed("s", 0, ERROR, t, t)], False),
                           ([RunFailed(ERROR, retriable=False)], True),
                           ([RunCompleted("1")], True),
                           ([done(engine, "s", 0, "1"), RunCompleted("1")], True),
                           ([], True)):
        with pytest.raises(LeaseLost, match="stale"):
            await engine.apply(stale, list(outcomes), last=last)
        assert await snapshot(engine) == before, outcomes
    with pytest.raises(LeaseLost, match="stale"):
        await engine.release(stale, 0)
    engine.clock.advance(0.5)
    await engine.renew([stale], LEASE_MS)  # renews nothing: the lease stays the fresh take's
    assert await snapshot(engine) == before
    applied = await engine.apply(fresh, [done(engine, "s", 0, "2"), RunCompleted("3")],
                                 last=True)
    assert applied.run_status == "completed" and applied.outputs == {"s": "2"}
    run = await engine.get_run(stale.run_id)
    assert run["output"] == "3" and [s["output"] for s in run["steps"]] == ["2"]


async def test_a_renewal_extends_only_the_take_it_names(engine: Engine) -> None:
    run_id = await start_run(engine, "A")
    lease = await held(engine, run_id, "A")

    def expiry(tx: Tx) -> int:
        return int(tx.raw_all("SELECT lease_expires_at FROM queue", {})[0]["lease_expires_at"])

    first = await engine.storage.read(expiry)
    engine.clock.advance(0.5)
    await engine.renew([lease], LEASE_MS)
    assert await engine.storage.read(expiry) == first + 500


async def test_a_completed_step_is_never_overwritten(engine: Engine) -> None:
    run_id = await start_run(engine)
    await apply(engine, run_id, "A", [done(engine, "s", 0, '"first"')], last=False)
    before = await snapshot(engine)
    again = await apply(engine, run_id, "A", [done(engine, "s", 0, '"second"')], last=False)
    assert again.outputs == {"s": '"first"'}
    t = now(engine)
    failed = await apply(engine, run_id, "A", [StepFailed("s", 0, ERROR, t, t, retriable=False)],
                                last=False)
    assert failed.outputs == {"s": '"first"'} and failed.failed == {}
    assert await snapshot(engine) == before


async def test_a_completion_after_a_step_stored_by_another_execution_is_refused_whole(
        engine: Engine) -> None:
    run_id = await start_run(engine)
    await apply(engine, run_id, "A", [done(engine, "s", 0, '"first"')], last=False)
    before = await snapshot(engine)
    with pytest.raises(LeaseLost, match="stored by another execution"):
        await apply(engine, run_id, "A", [done(engine, "t", 1, "1"),
                                         done(engine, "s", 0, '"second"'), RunCompleted("2")],
                           last=True)
    assert await snapshot(engine) == before  # neither step t nor the run's end is kept
    with pytest.raises(LeaseLost, match="stored by another execution"):  # its last step alone
        await apply(engine, run_id, "A", [done(engine, "s", 0, '"second"'), RunCompleted("2")],
                           last=True)
    assert await snapshot(engine) == before


async def test_completing_a_cancelled_run_says_it_was_cancelled(engine: Engine) -> None:
    run_id = await start_run(engine)
    await engine.cancel(run_id)
    before = await snapshot(engine)
    for outcomes in ([RunCompleted("1")], [done(engine, "s", 0, "1"), RunCompleted("1")]):
        with pytest.raises(RunCancelled):
            await apply(engine, run_id, "A", outcomes, last=True)
        assert await snapshot(engine) == before


async def test_outcomes_applied_twice_change_nothing_the_second_time(engine: Engine) -> None:
    run_id = await start_run(engine)
    t = now(engine)
    sent = (StoredEvent("sent-1", "elsewhere", "{}", t),)
    for outcome in (done(engine, "a", 0, "1"), EventsSent("b", 1, sent, t),
                    StepFailed("c", 2, ERROR, t, t),  # retried: one failed attempt recorded
                    StepFailed("d", 3, ERROR, t, t, retriable=False)):
        first = await apply(engine, run_id, "A", [outcome], last=False)
        before = await snapshot(engine)
        second = await apply(engine, run_id, "A", [outcome], last=False)
        assert await snapshot(engine) == before, outcome
        assert second == first, outcome
    # A batch that ends the execution gives up the lease: a resend is refused.
    await apply(engine, run_id, "A", [SleepUntil("e", 4, t + 60_000, t)], last=True)
    before = await snapshot(engine)
    with pytest.raises(LeaseLost):
        await apply(engine, run_id, "A", [SleepUntil("e", 4, t + 60_000, t)], last=True)
    assert await snapshot(engine) == before
    run = await engine.get_run(run_id)
    assert [(f["step_id"], f["attempt"]) for f in run["failures"]] == [("c", 1), ("d", 1)]


async def test_status_transitions_the_engine_allows(engine: Engine) -> None:
    run_id = await start_run(engine)
    assert await status(engine, run_id) == "running"
    t = now(engine)
    parked = await apply(engine, run_id, "A", [SleepUntil("nap", 0, t + 60_000, t)], last=True)
    assert parked.run_status == "sleeping" == await status(engine, run_id)
    engine.clock.advance(61)
    assert await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS) == [run_id]
    run = await engine.get_run(run_id)
    assert run["status"] == "running" and run["steps"][0]["status"] == "completed"

    t = now(engine)
    waiting = await apply(engine, run_id, "A", [WaitForEvent(
        "paid", 1, "invoice.paid", t + 3_600_000, t, match="data.user")], last=True)
    assert waiting.run_status == "waiting"
    await engine.ingest([StoredEvent("p1", "invoice.paid", '{"user": 2}', t)])  # no match
    assert await status(engine, run_id) == "waiting"
    await engine.ingest([StoredEvent("p2", "invoice.paid", '{"user": 1}', t)])
    assert await status(engine, run_id) == "queued"  # woken at once
    assert await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS) == [run_id]
    paid = (await engine.get_run(run_id))["steps"][1]
    assert paid["status"] == "completed" and '"p2"' in str(paid["output"])

    retried = await apply(engine, run_id, "A", [RunFailed(ERROR)], last=True)
    assert retried.run_status == "queued"
    assert (await engine.get_run(run_id))["retry"] == 1
    engine.clock.advance(2)
    assert await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS) == [run_id]
    failed = await apply(engine, run_id, "A", [RunFailed(ERROR, retriable=False)], last=True)
    assert failed.run_status == "failed" == await status(engine, run_id)

    assert (await engine.replay(run_id))["status"] == "queued"
    assert await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS) == [run_id]
    await apply(engine, run_id, "A", [RunCompleted("3")], last=True)
    run = await engine.get_run(run_id)
    assert run["status"] == "completed" and run["output"] == "3" and run["attempts"] == 2
    assert [s["id"] for s in run["steps"]] == ["nap", "paid"]  # kept across the replay


async def test_status_transitions_the_engine_refuses(engine: Engine) -> None:
    run_id = await start_run(engine)
    with pytest.raises(Conflict, match="running"):
        await engine.replay(run_id)
    assert (await engine.cancel(run_id))["status"] == "cancelled"
    with pytest.raises(RunCancelled):
        await apply(engine, run_id, "A", [done(engine, "s", 0, "1")], last=False)
    with pytest.raises(Conflict, match="already cancelled"):
        await engine.cancel(run_id)
    assert (await engine.replay(run_id))["status"] == "queued"
    assert await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS) == [run_id]
    before = await snapshot(engine)
    with pytest.raises(ValueError, match="after the run finished"):  # refused whole
        await apply(engine, run_id, "A", [RunCompleted("1"), done(engine, "late", 0, "1")],
                           last=True)
    assert await snapshot(engine) == before
    await apply(engine, run_id, "A", [RunCompleted("1")], last=True)
    for action in (engine.cancel, engine.replay):
        with pytest.raises(Conflict, match="completed"):
            await action(run_id)
    with pytest.raises(LeaseLost):
        await apply(engine, run_id, "A", [RunCompleted("2")], last=True)
    for action in (engine.cancel, engine.replay):
        with pytest.raises(NotFound):
            await action("no-such-run")


async def test_retry_policy_comes_from_the_stored_definition(engine: Engine) -> None:
    run_id = await start_run(engine)  # function f: retries=2, backoff 0.5-1 s
    t = now(engine)
    for attempt in (0, 1):
        applied = await apply(engine, run_id, "A", [StepFailed("s", 0, ERROR, t, t, attempt)],
                                     last=False)
        assert t + 500 <= applied.retry_at["s"] <= t + 1000, applied
    final = await apply(engine, run_id, "A", [StepFailed("s", 0, ERROR, t, t, 2)], last=False)
    assert final.failed == {"s": ERROR}
    own = await apply(engine, run_id, "A", [StepFailed(
        "t", 1, ERROR, t, t, attempt=4, retries=5, retry_after_ms=7000)], last=False)
    assert own.retry_at == {"t": t + 7000}  # its own retry count and the delay asked for
    once = await apply(engine, run_id, "A", [StepFailed("u", 2, ERROR, t, t, retriable=False)],
                              last=False)
    assert once.failed == {"u": ERROR}
    parked = await apply(engine, run_id, "A", [], last=True)
    assert parked.run_status == "queued"
    assert await engine.next_due(APP) == t + 7000  # when the retrying step is due
    run = await engine.get_run(run_id)
    assert sorted((f["step_id"], f["attempt"]) for f in run["failures"]) == [
        ("s", 1), ("s", 2), ("s", 3), ("t", 5), ("u", 1)]


async def test_waits_and_invokes_expire_when_the_run_is_leased(engine: Engine) -> None:
    run_id = await start_run(engine)
    t = now(engine)
    parked = await apply(engine, run_id, "A", [
        WaitForEvent("w", 0, "never.sent", t + 1000, t),
        Invoke("i", 1, "g", '{"x": 1}', t, t + 1000)], last=True)
    assert parked.run_status == "waiting"
    child = [r for r in await engine.list_runs({"function": "g"})]
    assert len(child) == 1 and child[0]["parent_run_id"] == run_id
    engine.clock.advance(2)
    assert run_id in await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS)
    steps = {s["id"]: s for s in (await engine.get_run(run_id))["steps"]}
    assert steps["w"]["status"] == "completed" and steps["w"]["output"] is None
    assert steps["i"]["status"] == "failed"
    assert "did not finish before the timeout" in str(steps["i"]["error"])


async def test_invoking_an_unknown_function_fails_the_step_not_the_engine(engine: Engine) -> None:
    run_id = await start_run(engine)
    t = now(engine)
    parked = await apply(engine, run_id, "A", [Invoke("i", 0, "missing", "{}", t)], last=True)
    assert parked.run_status == "queued"  # nothing to wait for: back at once
    step = (await engine.get_run(run_id))["steps"][0]
    assert step["status"] == "failed"
    assert "no function 'missing' is registered" in str(step["error"])


async def test_operations_that_make_work_due_wake_workers(engine: Engine) -> None:
    woken: list[int] = []
    engine.storage.on_new_work(lambda: woken.append(1))

    async def woke() -> bool:
        for _ in range(100):
            if woken:
                return True
            await asyncio.sleep(0.01)
        return False

    limited = FunctionDefinition("k", APP, (EventTrigger("go-k"),),
                                 flow=FlowOptions(concurrency=(Concurrency(limit=1),)))
    await engine.register(APP, [_definition("f", "go", retries=2), limited])
    await engine.ingest([StoredEvent("ek", "go-k", "{}", now(engine))])
    assert await woke()  # ingest created a run
    (limited_run,) = await lease_ids(engine, APP, ["k"], "A", 10, LEASE_MS)
    run_id = await start_run(engine)
    await asyncio.sleep(0.1)  # let a NOTIFY from PostgreSQL arrive before counting again
    woken.clear()
    await engine.cancel(run_id)  # no limit: its end frees nothing another run waits for
    await asyncio.sleep(0.1)
    assert woken == []
    await engine.cancel(limited_run)  # frees its concurrency slot
    assert await woke()
    # Completions (in one statement on PostgreSQL) wake as cancels do: only for a freed slot.
    other = await start_run(engine, event_id="e2")
    await engine.ingest([StoredEvent("ek2", "go-k", "{}", now(engine))])
    (limited_run,) = await lease_ids(engine, APP, ["k"], "A", 10, LEASE_MS)
    await asyncio.sleep(0.1)
    woken.clear()
    await apply(engine, other, "A", [done(engine, "s", 0, "1"), RunCompleted("1")], last=True)
    await asyncio.sleep(0.1)
    assert woken == [] and await status(engine, other) == "completed"
    await apply(engine, limited_run, "A", [done(engine, "s", 0, "1"), RunCompleted("1")],
                       last=True)
    assert await woke()
    assert await status(engine, limited_run) == "completed"
    await asyncio.sleep(0.1)
    woken.clear()
    with pytest.raises(Conflict):
        await engine.cancel(limited_run)  # rolled back: wakes nobody
    await engine.list_runs({})
    await asyncio.sleep(0.1)
    assert woken == []


async def test_registration_is_safe_when_many_processes_start_at_once(db: str) -> None:
    """Workers and servers register the same app concurrently (each its own connections)."""
    definitions = [_definition(f"f{i}", "go", 0) for i in range(5)]
    storages = [open_storage(db) for _ in range(6)]
    for storage in storages:
        await storage.open()
    try:
        engines = [Engine(s, ManualClock()) for s in storages]
        for _ in range(5):
            await asyncio.gather(*(e.register(APP, definitions) for e in engines))
        fewer = definitions[:2]  # a re-registration that drops functions removes them
        await asyncio.gather(*(e.register(APP, fewer) for e in engines))
        assert sorted(f["id"] for f in await engines[0].list_functions()) == ["f0", "f1"]
    finally:
        for storage in storages:
            await storage.close()


async def test_a_run_that_keeps_losing_its_worker_fails_after_the_takeover_limit(
        engine: Engine) -> None:
    from stepwise.engine.leasing import MAX_TAKEOVERS

    run_id = await start_run(engine, "w0")
    # An execution that ends normally resets the count: park once after two takeovers.
    for n in (1, 2):
        engine.clock.advance(2)
        assert await lease_ids(engine, APP, FUNCTIONS, f"w{n}", 10, LEASE_MS) == [run_id]
    t = now(engine)
    await apply(engine, run_id, "w2", [SleepUntil("nap", 0, t + 1, t)], last=True)
    engine.clock.advance(1)
    assert await lease_ids(engine, APP, FUNCTIONS, "x0", 10, LEASE_MS) == [run_id]
    for n in range(1, MAX_TAKEOVERS + 1):  # the lease expires again and again
        engine.clock.advance(2)
        assert await lease_ids(engine, APP, FUNCTIONS, f"x{n}", 10, LEASE_MS) == [run_id], n
    engine.clock.advance(2)
    assert await lease_ids(engine, APP, FUNCTIONS, "last", 10, LEASE_MS) == []
    run = await engine.get_run(run_id)
    assert run["status"] == "failed"
    error = loads(run["error"] or "{}")
    assert error["name"] == "WorkerLost" and f"{MAX_TAKEOVERS + 1} times" in error["message"]
    assert [f["step_id"] for f in run["failures"]] == [None]  # type: ignore[typeddict-item]


async def test_sdk_functions_get_inngest_events_for_cron_ticks_and_their_end(
        engine: Engine) -> None:
    """A function registered by an SDK app (it has a URL): its cron runs start with
    `inngest/scheduled.timer`, and its end is announced (`inngest/function.finished`, and
    `.failed` for a failure) in the same transaction, while a Python function gets none."""
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    sdk = FunctionDefinition("sdk-tick", "sdk", (CronTrigger("* * * * *"),),
                             RetryPolicy(0), url="http://127.0.0.1:1/api/inngest?fnId=sdk-tick")
    await engine.register("sdk", [sdk])
    clock.advance(61)
    (run_id,) = await lease_ids(engine, "sdk", ["sdk-tick"], "A", 10, LEASE_MS)
    run = await engine.get_run(run_id)
    assert run["event"] is not None and run["event"]["name"] == "inngest/scheduled.timer"
    timer = loads(run["event"]["data"])
    assert timer["cron"] == "* * * * *" and timer["scheduledAt"].endswith("Z")
    await apply(engine, run_id, "A", [RunFailed(ERROR, retriable=False)], last=True)
    finished = await engine.list_events({"name": "inngest/function.finished"})
    failed = await engine.list_events({"name": "inngest/function.failed"})
    assert [loads(e["data"])["run_id"] for e in finished] == [run_id]
    (announcement,) = [loads(e["data"]) for e in failed]
    assert announcement["function_id"] == "sdk-tick"
    assert announcement["error"]["error"] == "ValueError: nope"
    assert announcement["event"]["name"] == "inngest/scheduled.timer"
    clock.advance(60)  # the next tick's run completes: announced too
    (completed_run,) = await lease_ids(engine, "sdk", ["sdk-tick"], "A", 10, LEASE_MS)
    await apply(engine, completed_run, "A", [StepCompleted("s", 0, '"x"', 0, 0),
                                            RunCompleted("1")], last=True)
    finished = await engine.list_events({"name": "inngest/function.finished"})
    assert sorted(loads(e["data"])["run_id"] for e in finished) == sorted([run_id,
                                                                          completed_run])
    # A Python function's end announces nothing.
    native = await engine.ingest([StoredEvent("n1", "go", "{}", 0)])
    (native_run,) = await lease_ids(engine, APP, FUNCTIONS, "A", 10, LEASE_MS)
    await apply(engine, native_run, "A", [RunCompleted("1")], last=True)
    assert native == ["n1"]
    assert len(await engine.list_events({"name": "inngest/function.finished"})) == 2


async def test_leasing_with_state_answers_what_load_answers_in_every_case(engine: Engine) -> None:
    """The lease that starts executors reads their state itself (on PostgreSQL in one
    statement when no run is keyed or taken over and no timer is due): the same state as
    `load`, whichever way it went, with due sleeps settled and takeovers counted."""
    limited = FunctionDefinition("k", APP, (EventTrigger("go-k"),),
                                 flow=FlowOptions(concurrency=(Concurrency(limit=1),)))
    await engine.register(APP, [_definition("f", "go", retries=2), limited])

    async def lease(owner: str, functions: list[str] = FUNCTIONS) -> list[Any]:
        found = await engine.lease_runs(APP, functions, owner, 10, LEASE_MS)
        if found.next_due_known:
            assert found.next_due == await engine.next_due(APP)
        states = found.states
        for state in states:
            loaded = await engine.load(state.run["id"])
            assert loaded is not None
            assert (state.event, state.steps, state.batch) == (
                loaded.event, loaded.steps, loaded.batch)
            assert state.run == {k: v for k, v in loaded.run.items() if k != "lease_owner"}
            assert state.run["status"] == "running"
        return states

    await engine.ingest([StoredEvent("e1", "go", '{"n": 1}', now(engine))])
    (first,) = await lease("A")  # plain
    run_id = first.run["id"]
    assert first.event is not None and first.event["data"] == '{"n": 1}' and first.steps == {}
    t = now(engine)
    await apply(engine, run_id, "A", [done(engine, "a", 0, '"x"'),
                                     SleepUntil("nap", 1, t + 500, t)], last=True)
    engine.clock.advance(1)
    (woke,) = await lease("A")  # the sleep ended: settled before the executor sees it
    assert woke.steps["a"]["output"] == '"x"' and woke.steps["nap"]["status"] == "completed"
    engine.clock.advance(2)  # A's lease expired: B takes the run over
    (taken,) = await lease("B")
    assert taken.run["id"] == run_id and set(taken.steps) == {"a", "nap"}
    await engine.ingest([StoredEvent("ek", "go-k", "{}", now(engine))])
    (keyed,) = await lease("C", ["k"])  # a concurrency key to count
    assert keyed.run["function_id"] == "k"
    await engine.ingest([StoredEvent("ek2", "go-k", "{}", now(engine))])
    assert await lease("C", ["k"]) == []  # at its limit
    await engine.ingest([StoredEvent("e2", "go", "{}", now(engine))])
    (plain_again,) = await lease("D")
    assert plain_again.event is not None and plain_again.event["id"] == "e2"
