"""Properties of what stepwise stores: any value is either stored faithfully or refused with
a PayloadError naming it; any request body is either valid events or a 4xx ApiError."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepwise.payloads import MAX_DEPTH, Limits, PayloadError, dumps, loads, too_deep
from stepwise.server import ApiError, validate_events

# Text includes lone surrogates and NUL; numbers include huge ints, NaN and infinities.
scalars = (st.none() | st.booleans() | st.text() | st.floats()
           | st.integers(min_value=-(10**5000), max_value=10**5000))
values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=30)


def nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):  # objects and lists in turn, one level each
        value = {"a": value} if level % 2 else [value]
    return value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(values)
def test_a_value_is_stored_faithfully_or_refused_by_name(value: Any) -> None:
    try:
        text = dumps(value, "output of step 'x'", Limits().step_output_bytes)
    except PayloadError as exc:
        assert "output of step 'x'" in str(exc) or "JSON" in str(exc)
        return
    text.encode()  # storable as UTF-8
    assert _equal(loads(text), value)
    assert not too_deep(value)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH))
def test_depth_is_refused_exactly_past_the_limit(depth: int) -> None:
    value = nested(depth)
    assert too_deep(value) == (depth > MAX_DEPTH)
    try:
        dumps(value, "v")
        assert depth <= MAX_DEPTH
    except PayloadError as exc:
        assert depth > MAX_DEPTH and "nested deeper" in str(exc)


events = st.fixed_dictionaries(
    {"name": st.text(max_size=20)},
    optional={"data": values, "id": st.text(max_size=10) | st.integers(),
              "ts": st.integers(min_value=-10, max_value=10**22) | st.floats() | st.text(),
              "extra": st.none()})


@settings(max_examples=400, deadline=None)
@given(st.one_of(events, st.lists(events, max_size=4), values))
def test_a_body_is_valid_events_or_a_4xx(body: Any) -> None:
    try:
        raw = loads(json.dumps(body))
    except (PayloadError, ValueError):
        return  # not JSON at all: the route answers 400 before validating
    try:
        stored = validate_events(raw, Limits(), now=0)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    for event in stored:
        assert event.name.strip()
        assert not any(c < " " or c == "\x7f" for c in event.name + event.id)
        assert 0 <= event.ts <= 253_402_300_799_999
        event.data.encode()
        event.id.encode()
        assert isinstance(loads(event.data), dict)


def test_ts_is_a_json_integer_even_written_with_a_zero_fraction() -> None:
    """JSON Schema's integer includes 5.0 (the documented schema); a string of digits is not
    a number, and a fraction is not milliseconds."""
    (event,) = validate_events({"name": "ping", "ts": 5.0}, Limits(), now=0)
    assert event.ts == 5
    for bad in ("5", 5.5, True):
        with pytest.raises(ApiError, match=r"event\.ts"):
            validate_events({"name": "ping", "ts": bad}, Limits(), now=0)
