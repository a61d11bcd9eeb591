"""kill -9 a real `stepwise server` in the middle of a prune: nothing that should stay is lost,
nothing half-deleted is left (no step, log line or event without its run), and a prune after
the restart finishes the job."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from procs import engine_call, free_port, http, kill9, start, stop, wait_healthy, wait_until

DAY_MS = 86_400_000
OLD_FINISHED = 12_000  # deleted: 60 batches of the pruner
RECENT = 300  # finished a day ago: kept
UNFINISHED = 100  # sleeping for 40 days: kept, with their events...
SHARING = 100  # ...which finished old runs share: those runs go, the events stay


class Database:
    """Plain SQL on the test's database, on either backend, beside the server."""

    def __init__(self, url: str) -> None:
        self.postgres = url.startswith("postgresql")
        if self.postgres:
            import psycopg

            self.conn: Any = psycopg.connect(url, autocommit=True)
        else:
            self.conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30,
                                        isolation_level=None)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def insert(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self.postgres:
            with self.conn.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)
        else:
            self.conn.execute("BEGIN")
            self.conn.executemany(sql, rows)
            self.conn.execute("COMMIT")

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(self._sql(sql)).fetchall()]

    def count(self, sql: str) -> int:
        return int(self.rows(sql)[0][0])


def _fill(db: Database, now: int) -> None:
    old, recent = now - 40 * DAY_MS, now - DAY_MS
    events, runs, steps, logs = [], [], [], []

    def run(run_id: str, event_id: str, status: str, at: int, ended: bool) -> None:
        runs.append((run_id, "shop", "checkout", event_id, status,
                     '{"ok":true}' if ended else None, at, at, at + 50 if ended else None))
        steps.append((run_id, "charge", 0, "completed", 1, '{"paid":1}', at, at + 10, "charge"))
        if ended:
            steps.append((run_id, "ship", 1, "completed", 1, '"shipped"', at + 20, at + 40,
                          "ship"))
        logs.append((run_id, 0, at + 5, "info", "charge", f"charging for {run_id}"))

    for n in range(OLD_FINISHED):
        events.append((f"e-old-{n:06d}", "order.placed", f'{{"n":{n}}}', old, old))
        run(f"r-old-{n:06d}", f"e-old-{n:06d}", "completed", old + n, True)
    for n in range(RECENT):
        events.append((f"e-new-{n:06d}", "order.placed", f'{{"n":{n}}}', recent, recent))
        run(f"r-new-{n:06d}", f"e-new-{n:06d}", "completed", recent + n, True)
    for n in range(UNFINISHED):
        events.append((f"e-wait-{n:06d}", "order.placed", f'{{"n":{n}}}', old, old))
        run(f"r-wait-{n:06d}", f"e-wait-{n:06d}", "sleeping", old + n, False)
    for n in range(SHARING):
        run(f"r-share-{n:06d}", f"e-wait-{n:06d}", "completed", old + n, True)
    db.insert("INSERT INTO events (id, name, data, ts, received_at) VALUES (?, ?, ?, ?, ?)",
              events)
    db.insert("INSERT INTO runs (id, app_id, function_id, event_id, status, output, created_at,"
              " started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", runs)
    db.insert("INSERT INTO steps (run_id, id, seq, status, attempts, output, started_at, "
              "ended_at, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", steps)
    db.insert("INSERT INTO run_logs (run_id, seq, at, level, step_id, message) "
              "VALUES (?, ?, ?, ?, ?, ?)", logs)


def _kept(db: Database) -> list[Any]:
    """Every row that must survive any prune of runs older than 30 days, in a stable order."""
    return [db.rows("SELECT id, status, output, ended_at FROM runs WHERE id LIKE 'r-new-%' OR "
                    "id LIKE 'r-wait-%' ORDER BY id"),
            db.rows("SELECT run_id, id, output FROM steps WHERE run_id LIKE 'r-new-%' OR "
                    "run_id LIKE 'r-wait-%' ORDER BY run_id, id"),
            db.rows("SELECT run_id, message FROM run_logs WHERE run_id LIKE 'r-new-%' OR "
                    "run_id LIKE 'r-wait-%' ORDER BY run_id"),
            db.rows("SELECT id, data FROM events WHERE id LIKE 'e-new-%' OR id LIKE 'e-wait-%' "
                    "ORDER BY id")]


def _whole(db: Database) -> None:
    """No row left without its run, no run without its event."""
    assert db.count("SELECT COUNT(*) FROM steps s WHERE NOT EXISTS "
                    "(SELECT 1 FROM runs r WHERE r.id = s.run_id)") == 0
    assert db.count("SELECT COUNT(*) FROM run_logs l WHERE NOT EXISTS "
                    "(SELECT 1 FROM runs r WHERE r.id = l.run_id)") == 0
    assert db.count("SELECT COUNT(*) FROM runs r WHERE r.event_id IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM events e WHERE e.id = r.event_id)") == 0
    # Steps of a run go in the run's own transaction: every old run left has both its steps.
    assert db.count("SELECT COUNT(*) FROM runs r WHERE r.id LIKE 'r-old-%' AND "
                    "(SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id) <> 2") == 0


def test_kill_9_during_a_prune_loses_nothing_that_should_stay(db: str, tmp_path: Path) -> None:
    engine_call(db, lambda engine: engine.run_counts())  # the schema, by the migrations
    database = Database(db)
    _fill(database, int(time.time() * 1000))
    before = _kept(database)
    old_left = "SELECT COUNT(*) FROM runs WHERE id LIKE 'r-old-%' OR id LIKE 'r-share-%'"
    assert database.count(old_left) == OLD_FINISHED + SHARING

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["server", "--insecure", "--db", db, "--port", str(port)]
    server = start(args, tmp_path)
    try:
        wait_healthy(base, server)
        answers: list[Any] = []

        def prune() -> None:
            try:
                answers.append(http("POST", base + "/api/v1/prune",
                                    {"older_than": "30d", "max_runs": 1_000_000}))
            except OSError as exc:  # the server dies under it
                answers.append(exc)

        caller = threading.Thread(target=prune)
        caller.start()
        wait_until(lambda: database.count(old_left) < OLD_FINISHED, 30, "the first batch")
        time.sleep(random.uniform(0.0, 0.3))
        kill9(server)
        caller.join(15)
        left = database.count(old_left)
        assert 0 < left < OLD_FINISHED, (
            f"the kill came after the prune ended ({left} left): make OLD_FINISHED bigger")
        assert answers and isinstance(answers[0], OSError)
        assert _kept(database) == before
        _whole(database)

        server = start(args, tmp_path)
        wait_healthy(base, server)
        done = http("POST", base + "/api/v1/prune", {"older_than": "30d",
                                                     "max_runs": 1_000_000})
        assert done["runs"] == left and not done["more"]
        assert database.count(old_left) == 0
        assert database.count("SELECT COUNT(*) FROM events WHERE id LIKE 'e-old-%'") == 0
        assert _kept(database) == before
        _whole(database)
    finally:
        stop(server)
        database.conn.close()
