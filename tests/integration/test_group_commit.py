"""SQLite: concurrent writes share one transaction and one fsync (group commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import stepwise
from stepwise.storage.sqlite import SQLiteStorage
from stepwise.testing import Harness


async def test_concurrent_event_requests_share_commits(tmp_path: Path) -> None:
    app = stepwise.App("t")

    @app.function(id="f", trigger=stepwise.on_event("e"))
    async def f(ctx: stepwise.Context) -> None:
        return None

    storage = SQLiteStorage(str(tmp_path / "db.sqlite"))
    async with Harness(app, storage) as h:
        await h.worker.stop()  # only ingestion is measured here
        before = storage.commits
        # Hold the write connection, as a slow fsync would, while 100 requests arrive.
        storage._lock.acquire()
        try:
            requests = asyncio.gather(*(
                h.http.post("/api/v1/events", json={"name": "e", "id": f"ev-{i}"})
                for i in range(100)))
            task = asyncio.ensure_future(requests)
            deadline = asyncio.get_running_loop().time() + 10
            while storage._queue.qsize() < 99:  # the writer holds one, waiting for the lock
                assert asyncio.get_running_loop().time() < deadline, storage._queue.qsize()
                await asyncio.sleep(0.001)
        finally:
            storage._lock.release()
        responses = await task
        commits = storage.commits - before
    assert all(r.status_code == 200 for r in responses)
    assert commits <= 2, f"100 queued requests took {commits} commits"


async def test_one_failing_operation_does_not_spoil_its_batch(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite"))
    await storage.open()

    def insert(tx: object, key: str) -> str:
        tx.exec("insert_event", id=key, name="n", data="{}", ts=0, now=0,  # type: ignore[attr-defined]
                trace=None, meta=None)
        if key == "bad":
            raise ValueError("this one fails")
        return key

    results = await asyncio.gather(*(storage.write(insert, k) for k in ["a", "bad", "c"]),
                                   return_exceptions=True)
    rows = await storage.read(lambda tx: tx.raw_all("SELECT id FROM events ORDER BY id", {}))
    await storage.close()
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError)
    assert [r["id"] for r in rows] == ["a", "c"]
