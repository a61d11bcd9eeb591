"""Cron schedules: parsing and next ticks (croniter), in a time zone.

Missed ticks policy: when no worker ran at a tick (the app was down), one run is started for
the most recent missed tick when a worker is back; older missed ticks are skipped. Each tick's
run is started exactly once, even with many workers, because its event id is the tick itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: Each of the five fields' values: minute, hour, day of month, month, day of week.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))


def validate(cron: str, tz: str) -> None:
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ValueError(f"invalid cron expression {cron!r}: use five fields, e.g. '*/5 * * * *'")
    fields = cron.split()
    for (name, low, high), field in zip(_FIELDS, fields, strict=False):
        for part in field.split(","):
            _, slash, step = part.partition("/")
            # croniter takes a step past the field's range (`*/61`), which then never fires
            # as written: refuse it.
            if slash and step.isdigit() and not 0 < int(step) <= high - low:
                raise ValueError(f"invalid cron expression {cron!r}: the {name} step /{step} "
                                 f"must be between 1 and {high - low}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Paris'"
                         ) from None


def next_tick(cron: str, tz: str, after_ms: int) -> int:
    """The first tick strictly after `after_ms`, in ms."""
    start = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(ZoneInfo(tz))
    return int(croniter(cron, start).get_next(datetime).timestamp() * 1000)


def latest_tick(cron: str, tz: str, at_ms: int) -> int:
    """The last tick at or before `at_ms`, in ms."""
    return int(croniter(cron, datetime.fromtimestamp((at_ms + 1) / 1000, UTC).astimezone(
        ZoneInfo(tz))).get_prev(datetime).timestamp() * 1000)
