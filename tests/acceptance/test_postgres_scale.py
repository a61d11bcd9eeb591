"""Many worker and server processes against one PostgreSQL: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import random
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from procs import free_port, http, kill9, start, stop, wait_healthy, wait_until

from stepwise.engine import Engine
from stepwise.events import StoredEvent
from stepwise.storage import open_storage

APP = textwrap.dedent('''
    import os, threading, uuid
    import psycopg
    import stepwise

    app = stepwise.App("scale")
    _local = threading.local()
    WORKER = f"{os.getpid()}"

    def db():
        if getattr(_local, "conn", None) is None:
            _local.conn = psycopg.connect(os.environ["EFFECTS_DB"], autocommit=True)
        return _local.conn

    def effect(run_id, step, previous):
        nonce = uuid.uuid4().hex[:8]
        db().execute("INSERT INTO effects (run_id, step, worker, nonce) VALUES (%s, %s, %s, %s)",
                     (run_id, step, WORKER, nonce))
        return f"{previous}|{step}:{nonce}"

    @app.function(id="five", trigger=stepwise.on_event("job"), retries=10)
    def five(ctx):
        value = ""
        for step in range(5):
            value = ctx.step.run(f"s{step}", effect, ctx.run_id, step, value)
        return value
''')

SETUP = """
CREATE TABLE effects (run_id TEXT, step INT, worker TEXT, nonce TEXT,
                      at TIMESTAMPTZ DEFAULT clock_timestamp());
CREATE TABLE overwrites (run_id TEXT, step_id TEXT, old TEXT, new TEXT);
"""

# Installed once the migrations created `steps`: any change to a completed step is recorded.
AUDIT = """
CREATE FUNCTION audit_steps() RETURNS trigger AS $$
BEGIN
  IF OLD.status = 'completed' THEN
    INSERT INTO overwrites VALUES (OLD.run_id, OLD.id, OLD.output, NEW.output);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER steps_audit BEFORE UPDATE OR DELETE ON steps
  FOR EACH ROW EXECUTE FUNCTION audit_steps();
"""


def _prepare(url: str) -> None:
    async def migrate() -> None:
        storage = open_storage(url)
        await storage.open()
        await storage.close()

    asyncio.run(migrate())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)
        conn.execute(AUDIT)


def _send_events(url: str, count: int) -> None:
    async def send() -> None:
        storage = open_storage(url)
        await storage.open()
        events = [StoredEvent(id=f"job-{i}", name="job", data="{}", ts=0)
                  for i in range(count)]
        for chunk in range(0, count, 100):
            await Engine(storage).ingest(events[chunk:chunk + 100])
        await storage.close()

    asyncio.run(send())


def _wait_registered(url: str) -> None:
    def registered() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM function_triggers").fetchone()
            return bool(row and row[0] > 0)

    wait_until(registered, 30, "workers to register the app")


def _completed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()
        return int(row[0]) if row else 0


def _check_results(url: str, runs: int, exactly_once: bool) -> None:
    with psycopg.connect(url) as conn:
        statuses = dict(conn.execute(
            "SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        assert statuses == {"completed": runs}, statuses
        # Each run's output is the chain of its stored step outputs: nothing was replaced.
        for run_id, output in conn.execute("SELECT id, output FROM runs").fetchall():
            steps = conn.execute("SELECT output FROM steps WHERE run_id = %s ORDER BY seq",
                                 (run_id,)).fetchall()
            assert len(steps) == 5
            assert output.strip('"') == steps[-1][0].strip('"')
        assert conn.execute("SELECT count(*) FROM overwrites").fetchone() == (0,)
        per_step = conn.execute(
            "SELECT run_id, step, count(*) FROM effects GROUP BY run_id, step").fetchall()
        assert len(per_step) == runs * 5  # every step body ran
        if exactly_once:
            assert max(n for _, _, n in per_step) == 1, "a step body ran twice"
            owners = conn.execute(
                "SELECT run_id, count(DISTINCT worker) FROM effects GROUP BY run_id").fetchall()
            assert max(n for _, n in owners) == 1, "a run was executed by two workers"


@pytest.fixture
def pg(pg_schema: str, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "scale_app.py").write_text(APP)
    _prepare(pg_schema)
    return {"url": pg_schema, "env": {"EFFECTS_DB": pg_schema}, "cwd": tmp_path}


def _worker_args(url: str) -> list[str]:
    return ["worker", "scale_app:app", "--db", url, "--concurrency", "8",
            "--lease-seconds", "2"]


def test_three_workers_500_runs_every_step_once(pg: dict[str, Any]) -> None:
    workers = [start(_worker_args(pg["url"]), pg["cwd"], pg["env"]) for _ in range(3)]
    try:
        _wait_registered(pg["url"])
        _send_events(pg["url"], 500)
        wait_until(lambda: _completed(pg["url"]) == 500, 240, "500 runs to complete")
    finally:
        for w in workers:
            stop(w)
    _check_results(pg["url"], 500, exactly_once=True)
    with psycopg.connect(pg["url"]) as conn:
        busy = conn.execute("SELECT count(DISTINCT worker) FROM effects").fetchone()
    assert busy == (3,), "the load was not shared by the three workers"


def test_kill_9_workers_repeatedly_during_load(pg: dict[str, Any]) -> None:
    workers = [start(_worker_args(pg["url"]), pg["cwd"], pg["env"]) for _ in range(3)]
    kills = 0
    try:
        _wait_registered(pg["url"])
        _send_events(pg["url"], 300)
        deadline = time.monotonic() + 240
        # Kill at once, then every 0.1-0.4 s: on a fast machine the load takes under a second.
        while _completed(pg["url"]) < 300 and time.monotonic() < deadline:
            if kills < 6:
                victim = random.randrange(3)
                kill9(workers[victim])
                kills += 1
                workers[victim] = start(_worker_args(pg["url"]), pg["cwd"], pg["env"])
            time.sleep(random.uniform(0.1, 0.4))
        assert _completed(pg["url"]) == 300
    finally:
        for w in workers:
            stop(w)
    assert kills >= 3, f"only {kills} kills happened before the load finished"
    _check_results(pg["url"], 300, exactly_once=False)
    with psycopg.connect(pg["url"]) as conn:
        repeated = conn.execute("SELECT count(*) FROM (SELECT 1 FROM effects GROUP BY run_id, step "
                                "HAVING count(*) > 1) r").fetchone()
    print(f"{kills} kills; {repeated[0] if repeated else 0} step bodies ran more than once")


def test_two_servers_accept_events_at_once(pg: dict[str, Any]) -> None:
    ports = [free_port(), free_port()]
    servers = [start(["server", "--db", pg["url"], "--port", str(p), "--host", "127.0.0.1",
                      "--event-key", "event-key-for-tests", "--api-key", "api-key-for-tests"],
                     pg["cwd"]) for p in ports]
    worker = start(_worker_args(pg["url"]), pg["cwd"], pg["env"])
    errors: list[BaseException] = []
    try:
        for port, server in zip(ports, servers, strict=True):
            wait_healthy(f"http://127.0.0.1:{port}", server)
        _wait_registered(pg["url"])

        def client(port: int) -> None:
            import json
            import urllib.request
            try:
                for batch in range(20):
                    # Both servers get the same ids: each event must be stored once.
                    body = [{"name": "job", "id": f"ev-{batch}-{i}"} for i in range(10)]
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}/api/v1/events", data=json.dumps(body).encode(),
                        headers={"authorization": "Bearer event-key-for-tests",
                                 "content-type": "application/json"}, method="POST")
                    with urllib.request.urlopen(request, timeout=30) as response:
                        assert len(json.loads(response.read())["ids"]) == 10
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(p,)) for p in ports for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        wait_until(lambda: _completed(pg["url"]) == 200, 120, "200 runs")
        runs = http("GET", f"http://127.0.0.1:{ports[0]}/api/v1/runs?limit=1000",
                    headers={"authorization": "Bearer api-key-for-tests"})["runs"]
    finally:
        for proc in [*servers, worker]:
            stop(proc)
    with psycopg.connect(pg["url"]) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (200,)
        per_event = conn.execute("SELECT event_id, count(*) FROM runs GROUP BY event_id"
                                 ).fetchall()
    assert len(per_event) == 200 and {n for _, n in per_event} == {1}
    assert len(runs) == 200
