"""Poison functions (infinite loops, async and sync; a step that blocks longer than the lease)
next to normal ones on two real worker processes: the normal runs all complete, each poison
run fails with the documented AttemptTimeout error, and SIGTERM stops each worker within its
grace period."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from procs import engine_call, start, stop, wait_until

from stepwise.events import StoredEvent

APP = textwrap.dedent('''
    import time
    from datetime import timedelta
    import stepwise

    app = stepwise.App("poison")
    SHORT = timedelta(seconds=2)

    @app.function(id="normal", trigger=stepwise.on_event("normal"), retries=0)
    async def normal(ctx):
        return await ctx.step.run("work", lambda: ctx.event.data["i"])

    @app.function(id="normal-sync", trigger=stepwise.on_event("normal"), retries=0)
    def normal_sync(ctx):
        return ctx.step.run("work", lambda: ctx.event.data["i"])

    @app.function(id="spin-async", trigger=stepwise.on_event("spin-async"), retries=0,
                  attempt_timeout=SHORT)
    async def spin_async(ctx):
        while True:
            pass

    @app.function(id="spin-sync", trigger=stepwise.on_event("spin-sync"), retries=0,
                  attempt_timeout=SHORT)
    def spin_sync(ctx):
        while True:
            pass

    @app.function(id="block-step", trigger=stepwise.on_event("block-step"), retries=0,
                  attempt_timeout=timedelta(seconds=4))
    async def block_step(ctx):
        # A blocking call in async code: the user loop stops for 60 s, longer than the lease.
        return await ctx.step.run("block", time.sleep, 60)
''')

GRACE_S = 2.0


def _runs(db: str) -> dict[str, list[dict[str, Any]]]:
    rows = engine_call(db, lambda e: e.list_runs({}, 1000))
    by_function: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_function.setdefault(row["function_id"], []).append(row)
    return by_function


def test_poison_functions_cannot_take_the_workers_down(db: str, tmp_path: Path) -> None:
    (tmp_path / "poison_app.py").write_text(APP)
    args = ["worker", "poison_app:app", "--db", db, "--lease-seconds", "2", "--poll-seconds",
            "0.2", "--grace-seconds", str(GRACE_S), "--max-stuck-threads", "100"]
    workers = [start(args, tmp_path) for _ in range(2)]
    try:
        wait_until(lambda: engine_call(db, lambda e: e.list_functions()), 30, "registration")
        events = [StoredEvent(f"p-{name}", name, "{}", 0)
                  for name in ("spin-async", "spin-sync", "block-step")]
        events += [StoredEvent(f"n-{i}", "normal", json.dumps({"i": i}), 0) for i in range(40)]
        engine_call(db, lambda e: e.ingest(events))

        def settled() -> bool:
            runs = _runs(db)
            final = [r for rows in runs.values() for r in rows
                     if r["status"] in ("completed", "failed")]
            return len(final) == 83
        wait_until(settled, 90, "every run to end")
        runs = _runs(db)
        for function in ("normal", "normal-sync"):
            assert sorted(json.loads(r["output"]) for r in runs[function]) == list(range(40))
            assert {r["status"] for r in runs[function]} == {"completed"}
        for function, where in (("spin-async", "function 'spin-async' ran longer than"),
                                ("spin-sync", "function 'spin-sync' ran longer than"),
                                ("block-step", "step 'block' ran longer than")):
            [run] = runs[function]
            error = json.loads(run["error"])
            assert run["status"] == "failed", (function, run)
            assert error["name"] == "AttemptTimeout" and where in error["message"], error
        for proc in workers:
            assert proc.poll() is None, "a worker died"
        for proc in workers:  # the spinning threads are still there: SIGTERM must still work
            began = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(GRACE_S + 10)
            took = time.monotonic() - began
            assert took < GRACE_S + 4, f"SIGTERM took {took:.1f} s"
            print(f"worker stopped {took:.2f} s after SIGTERM (grace {GRACE_S} s)")
    finally:
        for proc in workers:
            stop(proc)


def test_a_worker_with_too_many_stuck_threads_exits_to_be_restarted(tmp_path: Path) -> None:
    (tmp_path / "poison_app.py").write_text(APP)
    db = f"sqlite:///{tmp_path / 'stuck.db'}"
    proc = start(["worker", "poison_app:app", "--db", db, "--poll-seconds", "0.2",
                  "--max-stuck-threads", "0"], tmp_path)
    try:
        wait_until(lambda: engine_call(db, lambda e: e.list_functions()), 30, "registration")
        engine_call(db, lambda e: e.ingest([StoredEvent("s", "spin-sync", "{}", 0)]))
        assert proc.wait(30) == 75
    finally:
        stop(proc)
    log = "".join(p.read_text() for p in tmp_path.glob("proc-*.log"))
    assert "stuck in user code" in log and "restarted" in log


def test_dev_server_answers_and_stops_while_user_code_spins(tmp_path: Path) -> None:
    import urllib.request

    from procs import free_port, http, wait_healthy

    (tmp_path / "poison_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "poison_app:app", "--port", str(port), "--db",
                  str(tmp_path / "dev.db"), "--grace-seconds", str(GRACE_S)], tmp_path)
    try:
        wait_healthy(base, proc)
        http("POST", base + "/api/v1/events", {"name": "spin-async"})
        http("POST", base + "/api/v1/events", {"name": "spin-sync"})
        wait_until(lambda: [r["status"] for r in http("GET", base + "/api/v1/runs")["runs"]]
                   == ["running", "running"], 10, "both functions to spin")
        for _ in range(5):
            began = time.monotonic()
            with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
                assert response.status == 200
            assert time.monotonic() - began < 1.0
        wait_until(lambda: {r["status"] for r in http("GET", base + "/api/v1/runs")["runs"]}
                   == {"failed"}, 30, "both spinning runs to time out")
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(GRACE_S + 10)
        assert time.monotonic() - began < GRACE_S + 4
    finally:
        stop(proc)
