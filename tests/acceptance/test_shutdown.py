"""SIGTERM while user code blocks: `stepwise worker` (on both backends) and `stepwise dev`
stop within their grace period, and the run that was executing is handed back at once (queued,
no lease), not left `running` until its lease expires."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from procs import engine_call, free_port, http, start, stop, wait_healthy, wait_until

from stepwise.events import StoredEvent

APP = textwrap.dedent('''
    import time
    import stepwise

    app = stepwise.App("stuck")

    @app.function(id="blocked-sync", trigger=stepwise.on_event("sync"), retries=0)
    def blocked_sync(ctx):
        return ctx.step.run("block", time.sleep, 3600)

    @app.function(id="blocked-step", trigger=stepwise.on_event("async"), retries=0)
    async def blocked_step(ctx):
        return await ctx.step.run("block", time.sleep, 3600)
''')

GRACE_S = 2.0


def _runs(db: str) -> list[dict[str, Any]]:
    return list(engine_call(db, lambda e: e.list_runs({}, 100)))


def _sigterm_within_grace(proc: Any) -> float:
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(GRACE_S + 20)
    took = time.monotonic() - began
    assert took < GRACE_S + 4, f"SIGTERM took {took:.1f} s"
    return took


def _handed_back(rows: list[dict[str, Any]]) -> None:
    assert len(rows) == 2, rows
    for row in rows:  # back in the queue at once, for any worker to take
        assert row["status"] == "queued", row


def test_worker_stops_on_sigterm_while_sync_code_blocks(db: str, tmp_path: Path) -> None:
    (tmp_path / "stuck_app.py").write_text(APP)
    proc = start(["worker", "stuck_app:app", "--db", db, "--poll-seconds", "0.2",
                  "--grace-seconds", str(GRACE_S)], tmp_path)
    try:
        wait_until(lambda: engine_call(db, lambda e: e.list_functions()), 30, "registration")
        engine_call(db, lambda e: e.ingest([StoredEvent("s", "sync", "{}", 0),
                                       StoredEvent("a", "async", "{}", 0)]))
        wait_until(lambda: [r["status"] for r in _runs(db)] == ["running", "running"], 30,
                   "both runs to block")
        took = _sigterm_within_grace(proc)
        assert proc.returncode in (0, 75), proc.returncode
        print(f"worker exited {took:.2f} s after SIGTERM (grace {GRACE_S} s)")
    finally:
        stop(proc)
    _handed_back(_runs(db))


def test_dev_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "stuck_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{tmp_path / 'dev.db'}"
    proc = start(["dev", "stuck_app:app", "--port", str(port), "--db", db,
                  "--grace-seconds", str(GRACE_S)], tmp_path)
    try:
        wait_healthy(base, proc)
        http("POST", base + "/api/v1/events", [{"name": "sync"}, {"name": "async"}])
        wait_until(lambda: [r["status"] for r in http("GET", base + "/api/v1/runs")["runs"]]
                   == ["running", "running"], 30, "both runs to block")
        _sigterm_within_grace(proc)
        assert proc.returncode in (0, 75), f"dev died of signal {-proc.returncode}"
    finally:
        stop(proc)
    _handed_back(_runs(db))
    log = "".join(p.read_text() for p in tmp_path.glob("proc-*.log"))
    assert "handing back 2 runs" in log, log[-2000:]
