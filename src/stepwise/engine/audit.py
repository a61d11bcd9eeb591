"""The audit log: who did what to what, when, and how it was answered, for every management
action (replays, cancels, bulk operations, retention, pruning, erasure) and every sign-in.

Entries are written by the server before it answers the action, so an action that was
answered is never missing from the log; they are never pruned by retention.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..payloads import PayloadError, dumps, loads, new_id
from ..storage import Tx

#: Longest detail (the request's JSON body, say) kept per entry, in characters.
MAX_DETAIL_CHARS = 4096


@dataclass(frozen=True)
class Entry:
    id: str
    at: int
    actor: str
    role: str
    action: str
    target: str
    status: int
    detail: Any


def record(tx: Tx, at: int, actor: str, role: str, action: str, target: str, status: int,
           detail: Any) -> str:
    try:
        text = dumps(detail, "the audit detail")
    except PayloadError as exc:  # a refused request's body may hold what JSON cannot
        text = dumps({"unreadable": str(exc)}, "the audit detail")
    if len(text) > MAX_DETAIL_CHARS:
        text = dumps({"truncated": text[:MAX_DETAIL_CHARS]}, "the audit detail")
    entry_id = _ordered_id()
    tx.exec("insert_audit_entry", id=entry_id, at=at, actor=actor, role=role, action=action,
            target=target, status=status, detail=text)
    return entry_id


def page(tx: Tx, before: tuple[int, str] | None, limit: int) -> list[Entry]:
    """Newest first, before the (at, id) cursor."""
    before_at, before_id = before or (2**62, "")
    rows = tx.all("audit_page", before_at=before_at, before_id=before_id, limit=limit)
    return [Entry(r["id"], int(r["at"]), r["actor"], r["role"], r["action"], r["target"],
                  int(r["status"]), loads(r["detail"])) for r in rows]


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_last_id = ""
_id_lock = threading.Lock()


def _ordered_id() -> str:
    """A new id after every id this process made before (ULIDs made in the same millisecond
    would be ordered at random): entries written at the same time list in the order made."""
    global _last_id
    with _id_lock:
        made = new_id()
        if made <= _last_id:
            value = 0
            for char in _last_id:
                value = value * 32 + _CROCKFORD.index(char)
            value += 1
            made = "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))
        _last_id = made
        return made
