"""Declared step result types: which annotation counts, and a clear error when a stored value
does not fit it (as after a code change)."""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

import pytest

from stepwise import results


def typed() -> date:
    return date(2026, 1, 1)


def untyped():  # type: ignore[no-untyped-def]
    return 1


def loose() -> Any:
    return 1


def test_the_declared_type_comes_from_the_annotation_or_the_step_options() -> None:
    assert results.declared_type(typed) is date
    assert results.declared_type(untyped) is None
    assert results.declared_type(loose) is None  # Any: the stored JSON as is
    assert results.declared_type(lambda: 1) is None
    assert results.declared_type(lambda: 1, explicit=date) is date
    assert results.declared_type(functools.partial(typed)) is None  # nothing to read
    assert results.declared_type(len) is None


def test_a_stored_value_is_rebuilt_or_refused_naming_the_step() -> None:
    assert results.rebuild("2026-01-01", date, "d") == date(2026, 1, 1)
    assert results.rebuild({"a": 1}, None, "d") == {"a": 1}
    with pytest.raises(TypeError, match="step 'd': its stored result does not fit the "
                                        "declared return type"):
        results.rebuild("not a date", date, "d")
