"""Pure functions: JSON encoding and limits, event validation, definitions, SQL loading."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

import stepwise
from stepwise.errors import DefinitionError
from stepwise.events import coerce_events
from stepwise.payloads import PayloadError, PayloadTooLarge, dumps, loads, new_id
from stepwise.storage import queries


def test_dumps_names_what_failed_and_refuses_nan() -> None:
    with pytest.raises(PayloadError, match="output of step 'x' is not JSON-serializable"):
        dumps(object(), "output of step 'x'")
    with pytest.raises(PayloadError, match="not JSON-serializable"):
        dumps({"v": math.nan}, "output of step 'x'")
    with pytest.raises(PayloadTooLarge, match="over the limit of 10 bytes"):
        dumps("é" * 6, "value", limit=10)  # 6 characters but 12 bytes
    assert dumps({"a": [1, "é"]}, "v") == '{"a":[1,"é"]}'


def test_loads_refuses_nan_and_reports_malformed_json() -> None:
    with pytest.raises(PayloadError, match="NaN"):
        loads('{"x": NaN}')
    with pytest.raises(PayloadError, match="malformed JSON"):
        loads("{")
    assert loads(b'{"a": 1}') == {"a": 1}


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 26 for i in ids)
    assert ids[0][:10] <= ids[-1][:10]


def test_send_event_shapes_are_coerced_and_validated() -> None:
    events = coerce_events([stepwise.Event("a", {"x": 1}), {"name": "b"}])
    assert [(e.name, e.data) for e in events] == [("a", {"x": 1}), ("b", {})]
    with pytest.raises(ValueError, match=r"events\[0\]\.name"):
        coerce_events({"data": {}})
    with pytest.raises(TypeError, match=r"stepwise\.Event or a dict"):
        coerce_events(["nope"])


def test_definition_errors_are_clear() -> None:
    app = stepwise.App("shop")
    with pytest.raises(DefinitionError, match="function id 'bad id!'"):
        app.function(id="bad id!", trigger=stepwise.on_event("x"))
    with pytest.raises(DefinitionError, match="non-empty event name"):
        stepwise.on_event("")
    with pytest.raises(DefinitionError, match="trigger must come from"):
        app.function(id="f", trigger="user.signup")  # type: ignore[arg-type]

    @app.function(id="f", trigger=stepwise.on_event("x"))
    def f(ctx: stepwise.Context) -> None:
        return None

    with pytest.raises(DefinitionError, match="already used"):
        app.function(id="f", trigger=stepwise.on_event("x"))
    with pytest.raises(DefinitionError, match="app id"):
        stepwise.App("")


def test_retry_after_accepts_a_timedelta_alone() -> None:
    assert stepwise.RetryAfterError(timedelta(minutes=2)).delay == 120
    assert stepwise.RetryAfterError("slow down", 5).delay == 5
    with pytest.raises(ValueError, match="negative"):
        stepwise.RetryAfterError("x", -1)


def test_manual_clock_only_moves_forward() -> None:
    clock = stepwise.ManualClock(start=100)
    clock.advance(5)
    assert clock.now() == 105 and clock.now_ms() == 105_000
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_postgres_queries_use_pyformat_and_keep_casts() -> None:
    pg = queries.load("postgres")
    assert "%(app_id)s" in pg["lease_candidates"] and "SKIP LOCKED" in pg["lease_candidates"]
    assert "SKIP LOCKED" not in queries.load("sqlite")["lease_candidates"]
    assert "pg_advisory_xact_lock" in pg["lock_key"]
    assert queries.to_pyformat("SELECT x::text, :y") == "SELECT x::text, %(y)s"
