"""Typed step results: a step whose function declares its return type (`-> Order`,
`-> list[datetime]`, `-> Decimal`) gets that type back from `ctx.step.run`, on the first
execution and on every replay alike, rebuilt from the stored JSON by pydantic. Without a
declared type (or with `Any`), the stored JSON itself is returned.

`StepOptions(id, returns=T)` declares the type where the function cannot (a lambda)."""

from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

_PLAIN = {Any, object, None, type(None)}


@functools.lru_cache(maxsize=4096)
def _declared(fn: Any) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # no annotations to read (a builtin, a partial, an unresolvable name)
        return None
    declared = hints.get("return")
    return None if declared in _PLAIN else declared


def declared_type(fn: Any, explicit: Any = None) -> Any:
    """The type a step's result is rebuilt as, or None to return the stored JSON."""
    if explicit is not None:
        return None if explicit in _PLAIN else explicit
    try:
        return _declared(fn)
    except TypeError:  # an unhashable callable
        return _declared.__wrapped__(fn)


@functools.lru_cache(maxsize=1024)
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def rebuild(value: Any, kind: Any, step_id: str) -> Any:
    """`value` (stored JSON) as `kind`; a TypeError naming the step if it does not fit."""
    if kind is None:
        return value
    try:
        try:
            adapter = _adapter(kind)
        except TypeError:  # an unhashable annotation
            adapter = TypeAdapter(kind)
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise TypeError(f"step {step_id!r}: its stored result does not fit the declared "
                        f"return type {kind!r}: {exc.errors()[0]['msg']}") from None
