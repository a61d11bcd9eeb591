"""A run's status is written where `engine/lifecycle.py` says: each statement that writes it
is sent by one module, the one that owns that transition."""

from __future__ import annotations

import re
from pathlib import Path

from stepwise.storage import queries

PACKAGE = Path(__file__).parents[2] / "src" / "stepwise"

#: Each statement that writes a run's status, and the one module that sends it.
OWNER = {
    "insert_run": "engine/flow_control.py", "insert_runs": "engine/flow_control.py",
    "ingest_routed": "engine/ingest.py",  # create (many at once, PostgreSQL)
    "start_runs": "engine/leasing.py", "lease_plain": "engine/leasing.py",  # take
    "set_run_status": "engine/lifecycle.py", "wake_run_status": "engine/lifecycle.py",
    "finish_run": "engine/lifecycle.py", "finish_leased_run": "engine/lifecycle.py",
    "replay_run": "engine/lifecycle.py", "insert_skipped_run": "engine/lifecycle.py",
    "complete_leased_run": "engine/__init__.py",  # finish, in one statement (PostgreSQL)
}
_WRITES_STATUS = re.compile(r"INSERT INTO runs\b|UPDATE runs SET\b[^;]*?\bstatus\b", re.S)


def _status_writers(dialect: str) -> set[str]:
    return {name for name, body in queries.load_raw(dialect).items()
            if _WRITES_STATUS.search(queries.without_comments(body))}


def test_every_status_writing_statement_has_an_owner() -> None:
    found = _status_writers("sqlite") | _status_writers("postgres")
    assert found == set(OWNER), f"give these an owner in OWNER: {sorted(found ^ set(OWNER))}"


def test_each_status_writing_statement_is_sent_by_its_owner_only() -> None:
    sources = {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}
    wrong = []
    for name, owner in OWNER.items():
        senders = {path for path, text in sources.items() if f'"{name}"' in text}
        if senders != {owner}:
            wrong.append(f"{name}: sent by {sorted(senders)}, owned by {owner}")
    assert not wrong, "\n".join(wrong)
