"""Per-key concurrency across two real worker processes: never more than the limit per key."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

from procs import start, stop, wait_until

from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.storage import Tx, open_storage

APP = textwrap.dedent('''
    import json, os, time
    import stepwise

    app = stepwise.App("keys")
    LOG = os.environ["KEYS_LOG"]

    def work(key):
        began = time.time()
        time.sleep(0.15)
        with open(LOG, "a") as f:
            f.write(json.dumps([key, began, time.time(), os.getpid()]) + "\\n")

    @app.function(id="per-user", trigger=stepwise.on_event("job"),
                  concurrency=stepwise.Concurrency(limit=2, key="event.data.user"))
    def per_user(ctx):
        ctx.step.run("work", work, ctx.event.data["user"])
''')


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def test_per_key_limit_holds_across_two_worker_processes(db: str, tmp_path: Path) -> None:
    (tmp_path / "keys_app.py").write_text(APP)
    log = tmp_path / "intervals.log"
    env = {"KEYS_LOG": str(log)}
    # 4 runs per process while 6 slots exist (2 per key): both processes must take part.
    args = ["worker", "keys_app:app", "--db", db, "--concurrency", "4", "--poll-seconds", "0.05"]
    workers = [start(args, tmp_path, env) for _ in range(2)]

    async def send() -> None:
        storage = open_storage(db)
        await storage.open()
        try:
            def registered(tx: Tx) -> bool:
                return bool(tx.raw_all("SELECT id FROM functions", {}))

            deadline = time.monotonic() + 30
            while not await storage.read(registered):
                assert time.monotonic() < deadline, "workers did not register"
                await asyncio.sleep(0.05)
            events = [StoredEvent(id=f"job-{i}", name="job",
                                      data=json.dumps({"user": f"u{i % 3}"}), ts=0)
                      for i in range(30)]
            await Engine(storage).ingest(events)
        finally:
            await storage.close()

    try:
        asyncio.run(send())
        wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 30, 60,
                   "30 runs to finish")
    finally:
        for w in workers:
            stop(w)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    by_key: dict[str, list[tuple[float, float]]] = {}
    for key, began, ended, _pid in rows:
        by_key.setdefault(key, []).append((began, ended))
    overlaps = {key: _max_overlap(intervals) for key, intervals in by_key.items()}
    assert sorted(by_key) == ["u0", "u1", "u2"]
    assert all(n <= 2 for n in overlaps.values()), overlaps
    assert max(overlaps.values()) == 2, "the limit was never reached: the test proves nothing"
    assert len({pid for *_, pid in rows}) == 2, "both worker processes took part"
