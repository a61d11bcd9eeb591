"""The one-statement ingest (PostgreSQL): events routed from the routes the engine read last
time, checked in the same statement. Whatever changed since (a function registered or
removed, a definition changed, a run that started waiting for the name) is seen: the
statement writes nothing and the engine ingests the general way. On SQLite every ingest is
the general one; the same behaviour holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.integration.leases import apply, lease_ids

from stepwise.clock import ManualClock
from stepwise.definition import EventTrigger, FunctionDefinition, RetryPolicy
from stepwise.engine import Engine, ingest
from stepwise.engine.outcomes import WaitForEvent
from stepwise.events import StoredEvent
from stepwise.flow import Concurrency, FlowOptions
from stepwise.storage import open_storage

APP = "routes"


def listens(function_id: str, event: str, expression: str | None = None,
            flow: FlowOptions | None = None) -> FunctionDefinition:
    return FunctionDefinition(function_id, APP, (EventTrigger(event, expression),),
                              RetryPolicy(0), flow=flow or FlowOptions())


@pytest.fixture
async def engine(db: str) -> AsyncIterator[Engine]:
    storage = open_storage(db)
    await storage.open()
    yield Engine(storage, ManualClock())
    await storage.close()


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each one-statement ingest answered: True when its routes held."""
    answers: list[bool] = []
    original = ingest._ingest_routed

    def spy(*args: object) -> bool:
        answers.append(original(*args))  # type: ignore[arg-type]
        return answers[-1]

    monkeypatch.setattr(ingest, "_ingest_routed", spy)
    return answers


async def functions_of_runs(engine: Engine, event_id: str) -> list[str]:
    return sorted(r["function_id"] for r in await engine.list_runs({"event_id": event_id}))


def event(event_id: str, name: str = "order.placed", data: str = '{"total": 5}') -> StoredEvent:
    return StoredEvent(event_id, name, data, 0)


async def test_routes_follow_every_registration(engine: Engine, routed: list[bool]) -> None:
    postgres = engine.storage.dialect == "postgres"
    await engine.register(APP, [listens("bill", "order.placed")])
    await engine.ingest([event("e1")])  # routes read: the general way
    await engine.ingest([event("e2")])  # routed from them
    assert routed == ([True] if postgres else [])
    assert await functions_of_runs(engine, "e2") == ["bill"]

    await engine.register(APP, [listens("ship", "order.placed")])  # bill no longer listens
    await engine.ingest([event("e3")])
    assert await functions_of_runs(engine, "e3") == ["ship"]
    await engine.ingest([event("e4")])
    assert await functions_of_runs(engine, "e4") == ["ship"]

    # Same function and trigger, another definition (a filter now): the routes changed too.
    await engine.register(APP, [listens("ship", "order.placed", "event.data.total > 10")])
    await engine.ingest([event("e5"), event("e6", data='{"total": 50}')])
    assert await functions_of_runs(engine, "e5") == []
    assert await functions_of_runs(engine, "e6") == ["ship"]
    await engine.ingest([event("e7"), event("e8", data='{"total": 50}')])
    assert await functions_of_runs(engine, "e7") == []
    assert await functions_of_runs(engine, "e8") == ["ship"]
    # On PostgreSQL each change was caught by the statement, which wrote nothing.
    assert routed == ([True, False, True, False, True] if postgres else [])
    events = await engine.list_events({}, limit=50)
    assert sorted(e["id"] for e in events) == [f"e{i}" for i in range(1, 9)]  # each once


async def test_a_run_that_starts_waiting_gets_the_next_event(engine: Engine,
                                                             routed: list[bool]) -> None:
    await engine.register(APP, [listens("bill", "order.placed"), listens("pay", "start")])
    await engine.ingest([event("e1", name="invoice.paid")])  # nobody listens, nobody waits
    await engine.ingest([event("s1", name="start")])
    [run_id] = await lease_ids(engine, APP, ["pay"], "A", 1, 60_000)
    t = engine.clock.now_ms()
    await apply(engine, run_id, "A", [WaitForEvent("paid", 0, "invoice.paid", t + 60_000, t)],
                       last=True)
    assert (await engine.get_run(run_id))["status"] == "waiting"

    await engine.ingest([event("e2", name="invoice.paid")])  # the cache says nobody waits
    run = await engine.get_run(run_id)
    assert run["status"] == "queued" and '"e2"' in str(run["steps"][0]["output"])
    if engine.storage.dialect == "postgres":
        assert routed == [False]  # "invoice.paid" was known with no waiter: now it has one


async def test_resends_and_repeats_start_one_run(engine: Engine, routed: list[bool]) -> None:
    await engine.register(APP, [listens("bill", "order.placed")])
    await engine.ingest([event("e0")])
    for _ in range(2):
        ids = await engine.ingest([event("e1"), event("e1", data='{"total": 9}'), event("e2")])
        assert ids == ["e1", "e1", "e2"]
    assert await functions_of_runs(engine, "e1") == ["bill"]
    assert await functions_of_runs(engine, "e2") == ["bill"]
    [stored] = [e for e in await engine.list_events({}, limit=50) if e["id"] == "e1"]
    assert stored["data"] == '{"total": 5}'  # the first of the repeated ids
    if engine.storage.dialect == "postgres":
        assert routed == [True, True]


async def test_functions_with_flow_control_take_the_general_way(
        engine: Engine, routed: list[bool]) -> None:
    limited = FlowOptions(concurrency=(Concurrency(limit=1),))
    await engine.register(APP, [listens("bill", "order.placed", flow=limited)])
    for i in range(3):
        await engine.ingest([event(f"e{i}")])
    assert routed == []
    assert len(await engine.list_runs({"function": "bill"})) == 3


async def test_wildcard_triggers_take_every_name_under_them(engine: Engine,
                                                            routed: list[bool]) -> None:
    """Inngest's wildcards (inngest-js's `run-payload-wildcard-schema/*` test): a trigger
    ending in "/*" or ".*" takes the names going on from there, at any depth; a bare "*"
    takes nothing; a function taken by two of an event's names runs once. The routed ingest
    (PostgreSQL) fingerprints the wildcard rows as the database does."""
    postgres = engine.storage.dialect == "postgres"
    await engine.register(APP, [
        listens("any-shop", "shop/*"), listens("orders", "shop/order.*"),
        listens("star", "*"), FunctionDefinition("twice", APP, (
            EventTrigger("shop/*"), EventTrigger("shop/order.placed")), RetryPolicy(0))])
    await engine.ingest([event("w1", "shop/order.placed")])
    assert await functions_of_runs(engine, "w1") == ["any-shop", "orders", "twice"]
    await engine.ingest([event("w2", "shop/order.placed"), event("w3", "shop/eu/refund"),
                         event("w4", "shopping"), event("w5", "shop/order")])
    assert await functions_of_runs(engine, "w2") == ["any-shop", "orders", "twice"]
    assert await functions_of_runs(engine, "w3") == ["any-shop", "twice"]
    assert await functions_of_runs(engine, "w4") == []
    assert await functions_of_runs(engine, "w5") == ["any-shop", "twice"]
    await engine.ingest([event("w6", "shop/order.placed")])  # every name known now
    assert await functions_of_runs(engine, "w6") == ["any-shop", "orders", "twice"]
    assert routed == ([True] if postgres else [])
