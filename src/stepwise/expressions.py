"""Safe expressions (CEL) over events, shared by wait_for_event(if_=...) and key options.

CEL cannot run arbitrary code, loops forever or touch the process: it is the expression
language Inngest uses for the same purpose. Expressions are compiled once and cached.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError


class ExpressionError(ValueError):
    """An expression does not compile, or failed to evaluate."""


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Any:
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("an expression must be a non-empty string")
    try:
        env = celpy.Environment()
        return env.program(env.compile(source))
    except Exception as exc:
        raise ExpressionError(f"invalid expression {source!r}: {exc}") from None


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """Evaluate `source` with JSON `variables` (e.g. {"event": {...}, "async": {...}})."""
    program = compile_expression(source)
    try:
        result = program.evaluate({k: json_to_cel(v) for k, v in variables.items()})
    except Exception as exc:
        raise ExpressionError(f"expression {source!r} failed: {exc}") from None
    if isinstance(result, CELEvalError):
        reason = result.args[0] if result.args else result
        raise ExpressionError(f"expression {source!r} failed: {reason}")
    return _to_python(result)


def _to_python(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.ListType):
        return [_to_python(v) for v in value]
    if isinstance(value, celtypes.MapType):
        return {str(k): _to_python(v) for k, v in value.items()}
    return value


def field_path(path: str) -> list[str]:
    """`data.user_id` (or `event.data.user_id`) to its keys."""
    if not isinstance(path, str) or not path.strip():
        raise ExpressionError("a match must be a field path such as 'data.user_id'")
    parts = path.strip().split(".")
    if parts[0] in ("event", "async"):
        parts = parts[1:]
    if not parts or not all(p.isidentifier() or p.isdigit() for p in parts):
        raise ExpressionError(f"invalid field path {path!r}: use dotted names like data.user_id")
    return parts


_MISSING = object()


def lookup(document: Any, parts: list[str]) -> Any:
    """The value at `parts` in a JSON document, or `MISSING`."""
    value = document
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


MISSING = _MISSING
