"""What the transaction helpers of `storage` promise the engine: deferred writes go out with
the next statement or the commit, and `commit_with` ends the transaction it closes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from stepwise.storage import Storage, Tx, open_storage


def event(event_id: str) -> dict[str, Any]:
    return {"id": event_id, "name": "n", "data": "{}", "ts": 1, "now": 1, "trace": None,
            "meta": None}


async def stored_ids(db: str) -> list[str]:
    async with open_storage(db) as storage:
        return await storage.read(lambda tx: [r["id"] for r in tx.raw_all(
            "SELECT id FROM events ORDER BY id", {})])


async def test_a_deferred_write_is_seen_by_the_next_statement_and_rolled_back_with_it(
        db: str) -> None:
    async with open_storage(db) as storage:
        def op(tx: Tx) -> int:
            tx.defer("insert_event", **event("a"))
            seen = len(tx.raw_all("SELECT id FROM events", {}))
            tx.defer("insert_event", **event("b"))
            raise RuntimeError(f"saw {seen}")
        with pytest.raises(RuntimeError, match="saw 1"):
            await storage.write(op)

        def commit_deferred(tx: Tx) -> None:
            tx.defer("insert_event", **event("c"))  # nothing else: it goes with the COMMIT
        await storage.write(commit_deferred)
    assert await stored_ids(db) == ["c"]


async def test_commit_with_ends_the_transaction_on_postgresql_and_not_on_sqlite(
        db: str) -> None:
    async with open_storage(db) as storage:
        def op(tx: Tx) -> None:
            tx.defer("insert_event", **event("a"))
            (answered,) = tx.commit_with([("insert_event", event("b"))])
            assert answered == [{"id": "b"}]
            tx.exec("insert_event", **event("c"))  # a transaction of its own (PostgreSQL)
            raise RuntimeError("after the commit")
        with pytest.raises(RuntimeError):
            await storage.write(op)
    kept = ["a", "b"] if db.startswith("postgresql") else []
    assert await stored_ids(db) == kept


async def test_statements_written_together_each_get_their_answer_and_a_bad_one_fails_alone(
        db: str) -> None:
    async with open_storage(db) as storage:
        answers = await asyncio.gather(
            *(storage.write_statement("insert_event", event(f"e{i:02}")) for i in range(20)))
        grouped = getattr(storage, "grouped_commits", None)
        answers += await asyncio.gather(
            *(storage.write_statement("insert_event", event(f"f{i:02}")) for i in range(5)),
            storage.write_statement("insert_event", {**event("bad"), "name": None}),
            storage.write_statement("insert_event", event("e00")),  # a resend: stores nothing
            return_exceptions=True)
    assert answers[:25] == [{"id": f"{c}{i:02}"} for c, n in (("e", 20), ("f", 5))
                            for i in range(n)]
    assert isinstance(answers[25], Exception) and "name" in str(answers[25])
    assert answers[26] is None
    assert await stored_ids(db) == [f"{c}{i:02}" for c, n in (("e", 20), ("f", 5))
                                    for i in range(n)]
    if db.startswith("postgresql"):  # those that waited went together: fewer commits
        assert grouped is not None and grouped >= 1


async def test_a_statement_sent_inline_answers_alike_and_leaves_no_writer_waiting(
        db: str) -> None:
    """`inline` (a caller alone on its loop): the statement is sent from the caller's thread
    when nobody else is sending, with the same answers and errors; statements that queued
    meanwhile, and after, are still sent."""
    async with open_storage(db) as storage:
        assert await storage.write_statement("insert_event", event("a"), inline=True) == \
            {"id": "a"}
        assert await storage.write_statement("insert_event", event("a"), inline=True) is None
        with pytest.raises(Exception, match="name"):
            await storage.write_statement("insert_event", {**event("bad"), "name": None},
                                          inline=True)
        answers = await asyncio.gather(
            *(storage.write_statement("insert_event", event(f"b{i}"), inline=i % 2 == 0)
              for i in range(6)),
            asyncio.to_thread(lambda: asyncio.run(_write_elsewhere(storage))))
        assert answers[:6] == [{"id": f"b{i}"} for i in range(6)]
        assert await storage.write_statement("insert_event", event("c")) == {"id": "c"}
    assert await stored_ids(db) == ["a", *(f"b{i}" for i in range(6)), "c",
                                    *(f"o{i}" for i in range(5))]


async def _write_elsewhere(storage: Storage) -> None:
    """A writer on another thread's loop, sending through the same storage meanwhile."""
    for i in range(5):
        assert await storage.write_statement("insert_event", event(f"o{i}"),
                                             inline=True) == {"id": f"o{i}"}


async def test_a_statement_queued_while_one_is_sent_inline_is_sent_after_it(
        pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL (SQLite's inline writes take its writer lock instead): another thread's
    statement that queues while an inline one is on its way is handed to a sender when the
    inline one is answered (it must never wait forever)."""
    db = pg_schema
    async with open_storage(db) as storage:
        original = storage._send  # type: ignore[attr-defined]
        other: list[Any] = []

        def write_meanwhile() -> None:
            other.append(asyncio.run(storage.write_statement("insert_event", event("q"))))

        def sending(group: list[tuple[str, dict[str, Any]]]) -> list[tuple[bool, Any]]:
            if not other:
                thread = threading.Thread(target=write_meanwhile)
                other.append(thread)
                thread.start()
                while not storage._waiting:  # type: ignore[attr-defined]
                    time.sleep(0.001)  # until the other statement has queued behind this one
            return original(group)  # type: ignore[no-any-return]

        monkeypatch.setattr(storage, "_send", sending)
        assert await storage.write_statement("insert_event", event("p"), inline=True) == \
            {"id": "p"}
        await asyncio.to_thread(other[0].join, 10)
        assert other[1:] == [{"id": "q"}]
    assert await stored_ids(db) == ["p", "q"]
