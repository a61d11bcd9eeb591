"""Durations as operators write them (`30d`, `12h`, `90m`, `1s`, `forever`): one reading for
the command line, the HTTP API and the stored settings."""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000}
#: A duration as the API documents it: 1 to 999999 of a unit (at most 19,000 years).
PATTERN = r"^[1-9][0-9]{0,5}(ms|s|m|h|d|w)$"
_DURATION = re.compile(r"^([1-9][0-9]{0,5})(ms|s|m|h|d|w)$")
#: Written for "keep forever" (no retention).
FOREVER = "forever"
#: A duration or `forever`, as the API documents it.
WINDOW_PATTERN = r"^([1-9][0-9]{0,5}(ms|s|m|h|d|w)|forever)$"


def parse_ms(text: str) -> int:
    """`30d` as milliseconds; ValueError naming the accepted forms otherwise."""
    found = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise ValueError(f"{text!r} is not a duration: a whole number from 1 to 999999 and "
                         "a unit, e.g. 30d, 12h, 90m, 1s (units: ms, s, m, h, d, w)")
    return int(found.group(1)) * _UNIT_MS[found.group(2)]


def parse_window(text: str) -> int | None:
    """`parse_ms`, or None for `forever`."""
    return None if text.strip().lower() == FOREVER else parse_ms(text)


def show(ms: int | None) -> str:
    """The shortest exact way to write `ms` (`30d`, `36h`), or `forever` for None."""
    if ms is None:
        return FOREVER
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"
