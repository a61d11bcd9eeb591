"""`stepwise dev -u URL` keeps an SDK app synced across restarts: while the app is down its
runs fail with a clear error and are retried, never stuck; when it comes back with other
functions, it is re-synced without anyone asking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until

ROOT = Path(__file__).resolve().parents[2]
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")


def serve_release(release: int, port: int, base: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.sdk.py_restart_app:app", "--port",
             str(port)], cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "INNGEST_DEV": base,
                                         "PYTHONPATH": str(ROOT), "RELEASE": str(release)})


def test_a_restarted_app_is_resynced_and_its_runs_wait_for_it(tmp_path: Path) -> None:
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app = serve_release(1, app_port, base, tmp_path / "app.log")
    dev = start(["dev", "-u", f"http://127.0.0.1:{app_port}/api/inngest", "--port", str(port),
                 "--db", str(tmp_path / "dev.db")], tmp_path)
    try:
        wait_healthy(base, dev)

        def functions() -> list[str]:
            return sorted(f["id"] for f in http("GET", base + "/api/v1/functions")["functions"])
        wait_until(lambda: functions() == ["py-restart-greet"], 60, "release 1 synced")
        app.terminate()
        app.wait(10)
        (event_id,) = http("POST", base + "/e/NO_EVENT_KEY_SET",
                           {"name": "person.arrived", "data": {}})["ids"]

        def failed_once() -> dict[str, Any] | None:
            runs = http("GET", f"{base}/api/v1/events/{event_id}")["runs"]
            run = http("GET", base + runs[0]["url"]) if runs else None
            return run if run and run["failures"] else None
        run = wait_until(failed_once, 60, "a failed call to the app that is down")
        assert run["status"] in ("queued", "running")  # retried (maybe already again), not failed
        assert run["failures"][0]["error"]["name"] == "AppUnreachable"
        assert "could not call the app" in run["failures"][0]["error"]["message"]
        app = serve_release(2, app_port, base, tmp_path / "app.log")
        wait_until(lambda: functions() == ["py-restart-farewell", "py-restart-greet"], 60,
                   "release 2 re-synced")

        def completed() -> dict[str, Any] | None:
            got = http("GET", f"{base}/api/v1/runs/{run['id']}")
            return got if got["status"] == "completed" else None
        assert wait_until(completed, 90, "the run after the app came back")["output"] == \
            "hello from release 2"
    finally:
        stop(dev)
        app.terminate()
        app.wait(10)
