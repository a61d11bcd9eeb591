"""Chaos: real servers and workers on one database, events sent while random processes get
kill -9 and are restarted. At the end every acknowledged event is stored once with exactly
one run, every run is final, no step ran again after its result was stored, and each server's
event counter equals what it acknowledged.

    pytest tests/chaos --chaos-events 10000 --chaos-kills 20 -s     # release size
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "acceptance"))
from procs import free_port, kill9, start, stop, wait_healthy, wait_until

from stepwise.engine import Engine
from stepwise.storage import open_storage

#: The app its workers run (copied next to them as a module).
EFFECTS_APP = Path(__file__).parent / "effects_app.py"


@dataclass
class Proc:
    args: list[str]
    port: int | None = None
    proc: Any = None
    incarnation: int = 0
    acked: dict[int, int] = field(default_factory=dict)  # incarnation -> events acknowledged


def _post(port: int, body: list[dict[str, Any]]) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/events", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200 and len(json.loads(response.read())["ids"])
                        == len(body))
    except (OSError, http.client.HTTPException, ValueError):  # killed mid-answer, 503
        return False


def _counter(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^stepwise_events_received_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _tables(db: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        storage = open_storage(db)
        await storage.open()
        try:
            def read(tx: Any) -> dict[str, Any]:
                return {
                    "events": [r["id"] for r in tx.raw_all("SELECT id FROM events", {})],
                    "runs": tx.raw_all("SELECT id, event_id, status FROM runs", {}),
                    "steps": tx.raw_all("SELECT run_id, id, status, ended_at FROM steps", {}),
                }
            return await storage.read(read)
        finally:
            await storage.close()
    return asyncio.run(go())


def _registered(db: str) -> bool:
    async def go() -> bool:
        storage = open_storage(db)
        await storage.open()
        try:
            return bool(await Engine(storage).list_functions())
        finally:
            await storage.close()
    return asyncio.run(go())


def _run_chaos(db: str, cwd: Path, events: int, kills: int) -> None:
    shutil.copy(EFFECTS_APP, cwd / "chaos_app.py")
    env = {"CHAOS_DIR": str(cwd)}
    servers = [Proc(["server", "--insecure", "--db", db, "--host", "127.0.0.1", "--port",
                     str(port)], port) for port in (free_port(), free_port())]
    workers = [Proc(["worker", "chaos_app:app", "--db", db, "--lease-seconds", "2",
                     "--poll-seconds", "0.2", "--concurrency", "8"]) for _ in range(2)]
    everyone = servers + workers

    def launch(p: Proc) -> None:
        p.incarnation += 1
        p.acked[p.incarnation] = 0
        p.proc = start(p.args, cwd, env)
        if p.port is not None:
            wait_healthy(f"http://127.0.0.1:{p.port}", p.proc)

    for p in everyone:
        launch(p)
    wait_until(lambda: _registered(db), 30, "the workers to register the app")
    acked: list[str] = []
    lock = threading.Lock()
    sending = threading.Event()
    sending.set()
    began = time.monotonic()

    def driver(first: int, step: int) -> None:
        n = first
        while n < events:
            batch = [{"name": "job", "id": f"ev-{i}"} for i in range(n, min(n + 10, events))]
            for _ in range(5):  # like a client: resend (same ids) to a server that answers
                server = random.choice(servers)
                incarnation = server.incarnation
                if _post(server.port or 0, batch):
                    with lock:
                        acked.extend(e["id"] for e in batch)
                        server.acked[incarnation] = server.acked.get(incarnation, 0) + len(
                            batch)
                    break
                time.sleep(0.2)
            n += step * 10

    drivers = [threading.Thread(target=driver, args=(i * 10, 4)) for i in range(4)]
    try:
        for t in drivers:
            t.start()
        # Spread the kills over sending and executing (about 100 runs/s on this machine).
        interval = max(0.5, events / 100 / (kills + 1))
        for _ in range(kills):
            time.sleep(interval * random.uniform(0.5, 1.5))
            victim = random.choice(everyone)
            kill9(victim.proc)
            launch(victim)
        for t in drivers:
            t.join(300)
        for p in workers:  # let the workers finish what was acknowledged
            assert p.proc.poll() is None
        def all_final() -> bool:
            tables = _tables(db)
            return len(tables["runs"]) >= len(set(acked)) and all(
                r["status"] == "completed" for r in tables["runs"])
        wait_until(all_final, 120 + events / 50, "every run to complete")
        counters = {s.port: _counter(s.port or 0) for s in servers}
    finally:
        for p in everyone:
            stop(p.proc)
    took = time.monotonic() - began
    tables = _tables(db)

    stored = tables["events"]
    assert len(stored) == len(set(stored))
    assert set(acked) <= set(stored), f"{len(set(acked) - set(stored))} acknowledged events lost"
    per_event: dict[str, int] = {}
    for run in tables["runs"]:
        per_event[run["event_id"]] = per_event.get(run["event_id"], 0) + 1
    assert set(per_event) == set(stored) and set(per_event.values()) == {1}, \
        "an event has no run or several"
    assert {r["status"] for r in tables["runs"]} == {"completed"}

    completed_at = {(s["run_id"], s["id"]): s["ended_at"] for s in tables["steps"]
                    if s["status"] == "completed"}
    starts = [json.loads(line) for f in cwd.glob("effects-*.jsonl")
              for line in f.read_text().splitlines() if line.strip()]
    reran = [e for e in starts if e["t"] * 1000 > completed_at[(e["run"], e["step"])] + 1]
    assert not reran, f"{len(reran)} steps ran again after their result was stored: {reran[:3]}"
    repeated = len(starts) - len(completed_at)
    for server in servers:  # the last incarnation of each server was never killed
        assert counters[server.port] == server.acked[server.incarnation], (
            "events_received_total disagrees with what the server acknowledged")
    print(f"\nchaos on {db.split(':')[0]}: {events} events sent, {len(set(acked))} "
          f"acknowledged, {len(stored)} stored, {kills} kill -9s, {len(tables['runs'])} runs "
          f"completed, 0 lost, 0 doubled, {repeated} step bodies re-ran before their result "
          f"was stored, 0 after; {took:.1f} s")


@pytest.mark.timeout(3600)
def test_chaos(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _run_chaos(db, tmp_path, request.config.getoption("--chaos-events"),
               request.config.getoption("--chaos-kills"))
