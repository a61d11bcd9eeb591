"""An execution's common end in one statement (PostgreSQL's `complete_leased_run`): its last
step stored and the run completed, fenced, grouped with other runs' writes. A run whose end
needs more (a parent to settle, an SDK function's lifecycle event) or whose lease is lost gets
no row: the engine then completes it the general way, which settles, announces or refuses.
SQLite always completes the general way; the same behaviour holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.integration.leases import apply, lease_ids

from stepwise.clock import ManualClock
from stepwise.definition import EventTrigger, FunctionDefinition, RetryPolicy
from stepwise.engine import Engine
from stepwise.engine.outcomes import Invoke, RunCompleted, StepCompleted
from stepwise.errors import LeaseLost
from stepwise.events import StoredEvent
from stepwise.payloads import loads
from stepwise.storage import open_storage

APP = "ends"
LEASE_MS = 60_000


@pytest.fixture
async def engine(db: str) -> AsyncIterator[Engine]:
    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage, ManualClock())
    await engine.register(APP, [FunctionDefinition(f, APP, (EventTrigger(f"go-{f}"),),
                                                   RetryPolicy(0)) for f in ("plain", "child")])
    await engine.register("sdk", [FunctionDefinition(
        "remote", "sdk", (EventTrigger("go-remote"),), RetryPolicy(0),
        url="http://127.0.0.1:1/api/inngest?fnId=remote")])
    yield engine
    await storage.close()


@pytest.fixture
def answers(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each one-statement completion answered: True when it completed the run."""
    seen: list[bool] = []
    original = engine.storage.write_statement

    async def spy(query: str, params: dict[str, Any], *, inline: bool = False
                  ) -> dict[str, Any] | None:
        row = await original(query, params, inline=inline)
        if query == "complete_leased_run":
            seen.append(row is not None)
        return row

    monkeypatch.setattr(engine.storage, "write_statement", spy)
    return seen


def step(step_id: str, output: str) -> StepCompleted:
    return StepCompleted(step_id, 0, output, 5, 6)


async def start(engine: Engine, app: str, function: str, event_id: str) -> str:
    await engine.ingest([StoredEvent(event_id, f"go-{function}", "{}", 0)])
    (run_id,) = await lease_ids(engine, app, [function], "A", 10, LEASE_MS)
    return run_id


async def test_a_plain_end_stores_its_step_and_completes_in_one_statement(
        engine: Engine, answers: list[bool]) -> None:
    postgres = engine.storage.dialect == "postgres"
    run_id = await start(engine, APP, "plain", "e1")
    applied = await apply(engine, run_id, "A", [step("s", '"out"'), RunCompleted('"done"')],
                                 last=True)
    assert applied.outputs == {"s": '"out"'} and applied.run_status == "completed"
    run = await engine.get_run(run_id)
    assert (run["status"], run["output"], run["ended_at"]) == ("completed", '"done"',
                                                               engine.clock.now_ms())
    assert [(s["id"], s["status"], s["output"], s["attempts"], s["started_at"], s["ended_at"])
            for s in run["steps"]] == [("s", "completed", '"out"', 1, 5, 6)]
    no_step = await start(engine, APP, "plain", "e2")
    await apply(engine, no_step, "A", [RunCompleted("2")], last=True)
    assert (await engine.get_run(no_step))["status"] == "completed"
    assert answers == ([True, True] if postgres else [])
    # Nothing is left to schedule either run: no lease to renew, nothing due.
    assert await lease_ids(engine, APP, ["plain"], "B", 10, LEASE_MS) == []
    with pytest.raises(LeaseLost):  # a resend finds the run no longer leased
        await apply(engine, run_id, "A", [step("s", '"out"'), RunCompleted('"done"')],
                           last=True)
    assert answers == ([True, True, False] if postgres else [])


async def test_an_invoked_run_settles_its_parent_the_general_way(
        engine: Engine, answers: list[bool]) -> None:
    postgres = engine.storage.dialect == "postgres"
    parent = await start(engine, APP, "plain", "e1")
    await apply(engine, parent, "A", [Invoke("i", 0, "child", '{"x": 1}', 0)], last=True)
    (child,) = await lease_ids(engine, APP, ["child"], "A", 10, LEASE_MS)
    await apply(engine, child, "A", [step("c", "1"), RunCompleted('"child out"')], last=True)
    assert answers == ([False] if postgres else [])
    assert (await engine.get_run(child))["status"] == "completed"
    (invoke_step,) = (await engine.get_run(parent))["steps"]
    assert (invoke_step["status"], invoke_step["output"]) == ("completed", '"child out"')
    assert await lease_ids(engine, APP, ["plain"], "A", 10, LEASE_MS) == [parent]  # woken


async def test_an_sdk_function_run_is_announced_the_general_way(
        engine: Engine, answers: list[bool]) -> None:
    postgres = engine.storage.dialect == "postgres"
    run_id = await start(engine, "sdk", "remote", "e1")
    await apply(engine, run_id, "A", [step("s", "1"), RunCompleted("2")], last=True)
    assert answers == ([False] if postgres else [])
    assert (await engine.get_run(run_id))["status"] == "completed"
    (finished,) = await engine.list_events({"name": "inngest/function.finished"})
    assert loads(finished["data"])["run_id"] == run_id
