"""Function statistics: completed and failed runs and their p50/p95 durations over time, read
from a rollup, so that a request costs as much at ten million runs as at ten thousand.

`read_rollup` and `add_rollup` (before every retention pass, so about every minute) add the
runs that finished since its cursor to hourly slots per function and status: a count and a
histogram of durations (creation to end) in buckets an eighth of a doubling wide, so a
percentile read from it is within about 5% of the exact one. A read takes the slots of its
window and adds the runs that finished after the cursor, read raw: its counts are exact and as
fresh as the last commit. Only runs that ended over LAG_MS ago are rolled up, so that a run
stamped by a worker whose clock runs a little behind, or whose end commits a moment later, is
not passed over. The rollup outlives the runs: retention deletes runs, not their counts
(slots older than the longest window asked for go with a pass).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..payloads import dumps, loads
from ..status import RunStatus
from ..storage import Tx

#: An hour: a week's window reads 168 slots per function and status; narrower buckets than a
#: slot (the last hour in 2.5-minute buckets) are read raw.
SLOT_MS = 3_600_000
LAG_MS = 60_000
#: Finished runs rolled up per transaction.
ROLLUP_ROWS = 5_000
#: The most finished runs one read takes raw (the newest; more: `truncated`).
RAW_ROWS = 100_000
#: The longest window the API asks for (90 days): older slots are deleted.
KEEP_MS = 91 * 86_400_000
_CURSOR = "stats.rollup"
_COUNTED = (RunStatus.completed, RunStatus.failed)


def _bucket(ms: int) -> int:
    return int(math.log2(ms + 1) * 8) if ms > 0 else 0


def _value(bucket: int) -> int:
    """A duration that stands for its bucket: the geometric middle of its bounds."""
    return max(0, round(2 ** ((bucket + 0.5) / 8) - 1)) if bucket else 0


def _cursor(tx: Tx) -> tuple[int, str] | None:
    row = tx.one("get_setting", name=_CURSOR)
    if row is None:
        return None
    at, _, run_id = str(row["value"]).partition(" ")
    return int(at), run_id


@dataclass
class Rollup:
    """Finished runs read past the cursor (`read_rollup`), to add (`add_rollup`)."""

    after: tuple[int, str] | None
    until: tuple[int, str] | None = None
    rows: int = 0
    slots: dict[tuple[int, str, str], Counter[int]] = field(default_factory=dict)


def read_rollup(tx: Tx, now: int, limit: int = ROLLUP_ROWS) -> Rollup:
    """Read up to `limit` runs that finished past the cursor (a read: no writer is held)."""
    after = _cursor(tx)
    start = after or (-1, "")
    rows = tx.all("finished_runs_page", before=now - LAG_MS, after_at=start[0],
                  after_id=start[1], limit=limit)
    rollup = Rollup(after, rows=len(rows))
    for row in rows:
        if row["status"] not in _COUNTED:
            continue
        ended = int(row["ended_at"])
        key = (ended - ended % SLOT_MS, row["function_id"], row["status"])
        rollup.slots.setdefault(key, Counter())[_bucket(ended - int(row["created_at"]))] += 1
    if rows:
        rollup.until = (int(rows[-1]["ended_at"]), str(rows[-1]["id"]))
    return rollup


def add_rollup(tx: Tx, rollup: Rollup) -> bool:
    """Add what `read_rollup` read and move the cursor past it, unless another process moved
    it meanwhile (then nothing is written: its caller reads again)."""
    if rollup.until is None or _cursor(tx) != rollup.after:
        return False
    for (slot, function_id, status), durations in rollup.slots.items():
        found = tx.one("get_run_stats", slot=slot, function_id=function_id, status=status)
        if found is not None:
            durations = durations + Counter(
                {int(k): int(v) for k, v in loads(found["durations"]).items()})
        tx.exec("put_run_stats", slot=slot, function_id=function_id, status=status,
                n=sum(durations.values()), durations=dumps(
                    {str(k): v for k, v in sorted(durations.items())}, "durations"))
    tx.exec("put_setting", name=_CURSOR, value=f"{rollup.until[0]} {rollup.until[1]}")
    return True


def forget(tx: Tx, now: int) -> int:
    """Delete slots older than the longest window asked for."""
    return tx.exec("prune_run_stats", before=now - KEEP_MS)


def function_stats(tx: Tx, since: int, now: int, buckets: int) -> dict[str, Any]:
    """Per function: completed and failed runs and p50/p95 durations (creation to end), in
    `buckets` equal slices from `since` to now. Over the rollup, slices are whole slots
    (`since` moves back to a slot's start); a window too short for that, or not rolled up
    yet, is read raw and exact."""
    width = max(1, (now - since + buckets - 1) // buckets)
    cursor = _cursor(tx)
    rolled = cursor is not None and width >= SLOT_MS and cursor[0] >= since
    if rolled:
        width = -(-width // SLOT_MS) * SLOT_MS
        since -= since % SLOT_MS
    after = cursor if rolled and cursor is not None else (since - 1, "")
    raw = tx.all("finished_after", after_at=after[0], after_id=after[1], now=now,
                 limit=RAW_ROWS)
    counts: dict[str, dict[str, list[int]]] = {}
    histograms: dict[str, list[Counter[int]]] = {}
    exact: dict[str, list[list[int]]] = {}

    def slot_of(function_id: str) -> tuple[dict[str, list[int]], list[Counter[int]],
                                            list[list[int]]]:
        if function_id not in counts:
            counts[function_id] = {s: [0] * buckets for s in _COUNTED}
            histograms[function_id] = [Counter() for _ in range(buckets)]
            exact[function_id] = [[] for _ in range(buckets)]
        return counts[function_id], histograms[function_id], exact[function_id]

    for row in raw:
        index = min(buckets - 1, (int(row["ended_at"]) - since) // width)
        if index < 0 or row["status"] not in _COUNTED:
            continue
        counted, histogram, values = slot_of(row["function_id"])
        duration = int(row["ended_at"]) - int(row["created_at"])
        counted[row["status"]][index] += 1
        histogram[index][_bucket(duration)] += 1
        values[index].append(duration)
    if rolled:
        for row in tx.all("run_stats_since", since=since):
            index = min(buckets - 1, (int(row["slot"]) - since) // width)
            counted, histogram, _ = slot_of(row["function_id"])
            counted[row["status"]][index] += int(row["n"])
            histogram[index].update({int(k): int(v) for k, v in
                                     loads(row["durations"]).items()})
    out: dict[str, Any] = {}
    for function_id, counted in counts.items():
        stats: dict[str, Any] = dict(counted)
        if rolled:
            stats["p50_ms"] = [_from_histogram(h, 0.50) for h in histograms[function_id]]
            stats["p95_ms"] = [_from_histogram(h, 0.95) for h in histograms[function_id]]
        else:
            stats["p50_ms"] = [_percentile(v, 0.50) for v in exact[function_id]]
            stats["p95_ms"] = [_percentile(v, 0.95) for v in exact[function_id]]
        out[function_id] = stats
    return {"since": since, "bucket_ms": width, "buckets": buckets,
            "truncated": len(raw) == RAW_ROWS, "functions": out}


def _percentile(values: list[int], q: float) -> int | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def _from_histogram(histogram: Counter[int], q: float) -> int | None:
    """Nearest-rank percentile of a histogram, as its bucket's middle (None when empty)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return _value(bucket)
    return None  # not reached: the ranks add up to the total
