"""Wake-ups follow from what is written: every statement that writes the queue either says
how it wakes the workers (`-- wakes:` in queries.sql) or is known not to make work due."""

from __future__ import annotations

import re

import pytest

from stepwise.storage import queries

#: Queue writes that make nothing due: a take, its renewal and counts, a keyed mark, a
#: postponement, a fragment (its statement says), and the lease (it takes what was due).
NEVER_WAKE = {"take", "mark_keyed", "renew_lease", "count_takeover", "postpone_unleased",
              "run_cleanup", "lease_plain"}
_QUEUE_WRITE = re.compile(r"INSERT INTO queue\b|UPDATE queue\b|DELETE FROM queue(_keys)?\b")


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_queue_write_says_whether_it_wakes(dialect: str) -> None:
    rules = queries.wakes()
    silent = [name for name, body in queries.load_raw(dialect).items()
              if _QUEUE_WRITE.search(queries.without_comments(body)) and name not in rules
              and name not in NEVER_WAKE]
    assert not silent, f"say in queries.sql how these wake workers (-- wakes: ...): {silent}"


def test_wake_rules() -> None:
    assert queries.woke(queries.ALWAYS, {}, None)
    assert queries.woke("ids", {"ids": ["r1"]}, None)
    assert not queries.woke("ids", {"ids": []}, None)
    assert queries.woke(queries.ANSWERED, {}, [{"wake": True}])
    assert not queries.woke(queries.ANSWERED, {}, [{"wake": False}])
    assert not queries.woke(queries.ANSWERED, {}, None)
    assert not queries.woke(None, {"ids": ["r1"]}, [{"wake": True}])
    assert queries.wakes()["finish_cleanup"] == queries.ANSWERED
