"""Per-step overhead of SDK functions over HTTP next to a Python-native one, same machine.

    npm ci --prefix tests/sdk/ts && python bench/sdk_steps.py [runs] [--db URL]

Starts `stepwise dev` with a 20-step function on Inngest's Python SDK (FastAPI, uvicorn) and on
its TypeScript SDK (Express), runs each `runs` times one after the other, and prints one JSON
line: per-step milliseconds (median, p90) from each run's start to its end, divided by its
steps. The Python-native figure is `bench/steps_stepwise.py` on the same database kind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
TS = ROOT / "tests" / "sdk" / "ts"
STEPS = 20


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("timed out")


def ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


def per_step(base: str, event: str, runs: int) -> list[float]:
    figures = []
    for _ in range(runs + 1):  # the first run warms up and is left out
        (event_id,) = call("POST", base + "/e/bench", {"name": event, "data": {}})["ids"]

        def done(event_id: str = event_id) -> dict[str, Any] | None:
            found = call("GET", f"{base}/api/v1/events/{event_id}")["runs"]
            return found[0] if found and found[0]["status"] == "completed" else None
        run = until(done)
        figures.append((ms(run["ended_at"]) - ms(run["started_at"])) / STEPS)
    return figures[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=int, nargs="?", default=20)
    parser.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    options = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    base_port, py_port, ts_port = port(), port(), port()
    base = f"http://127.0.0.1:{base_port}"
    env = {**os.environ, "INNGEST_DEV": base, "PYTHONPATH": str(ROOT)}
    log = open(tmp / "log", "w")  # noqa: SIM115 - the children keep it open
    procs = [
        subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.sdk.py_steps:app", "--port",
                          str(py_port), "--log-level", "warning"], cwd=ROOT, env=env,
                         stdout=log, stderr=log, start_new_session=True),
        subprocess.Popen([str(TS / "node_modules" / ".bin" / "tsx"), "bench_steps.ts"], cwd=TS,
                         env={**env, "PORT": str(ts_port)}, stdout=log, stderr=log,
                         start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "stepwise.cli", "dev", "--port", str(base_port),
                          "--db", options.db or str(tmp / "dev.db"),
                          "-u", f"http://127.0.0.1:{py_port}/api/inngest",
                          "-u", f"http://127.0.0.1:{ts_port}/api/inngest"],
                         cwd=tmp, env=env, stdout=log, stderr=log, start_new_session=True)]
    try:
        until(lambda: len(call("GET", base + "/api/v1/functions")["functions"]) == 2)
        result: dict[str, Any] = {"steps": STEPS, "runs": options.runs}
        for name, event in (("python_sdk", "bench.py"), ("typescript_sdk", "bench.ts")):
            figures = sorted(per_step(base, event, options.runs))
            result[f"{name}_per_step_ms_median"] = round(statistics.median(figures), 3)
            result[f"{name}_per_step_ms_p90"] = round(figures[int(len(figures) * 0.9) - 1], 3)
        print(json.dumps(result))
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
