"""Which workers are alive and what they serve. Each worker's heartbeat refreshes its row
(`expires_at` is when it counts as gone); operators read them, with the queued runs that no
live worker serves (a function nobody deploys any more, a worker fleet that is down)."""

from __future__ import annotations

from typing import Any

from ..payloads import dumps, loads
from ..storage import Tx

#: A worker that stopped heart-beating this long ago (killed without a goodbye) is forgotten.
FORGET_AFTER_MS = 24 * 3600 * 1000


def heartbeat(tx: Tx, worker: dict[str, Any], now: int, expires_at: int) -> None:
    """Record that `worker` (id, app_id, host, pid, functions, slots, in_use) is alive."""
    tx.exec("upsert_worker", **{**worker, "functions": dumps(sorted(worker["functions"]),
                                                             "functions")},
            now=now, expires_at=expires_at)
    tx.exec("forget_dead_workers", before=now - FORGET_AFTER_MS)


def goodbye(tx: Tx, worker_id: str) -> None:
    tx.exec("delete_worker", id=worker_id)


def overview(tx: Tx, now: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Workers (live first; recently gone ones too, marked), and the due, unheld runs whose
    function no live worker serves, by function."""
    workers = []
    served: set[tuple[str, str]] = set()
    for row in tx.all("workers"):
        live = int(row["expires_at"]) > now
        functions = loads(row["functions"])
        workers.append({**row, "functions": functions, "live": live})
        if live:
            served.update((row["app_id"], f) for f in functions)
    workers.sort(key=lambda w: (not w["live"], w["app_id"], w["started_at"]))
    unserved = [{"app_id": r["app_id"], "function_id": r["function_id"], "queued": int(r["n"]),
                 "oldest_at": int(r["oldest"])}
                for r in tx.all("queued_by_function", now=now)
                if (r["app_id"], r["function_id"]) not in served]
    return workers, unserved
