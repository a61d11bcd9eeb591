"""Per-step time of SDK functions over HTTP next to a Python-native one, in one `stepwise dev`.

    npm ci --prefix tests/sdk/ts && python bench/sdk_steps.py [runs] [--db URL]

Starts `stepwise dev` with a 10-step function on Inngest's Python SDK (FastAPI, uvicorn), the
same on its TypeScript SDK 4.x (Express) twice, with checkpointing (the SDK's default when the
server offers it: the steps run within one call, each stored through
`/v1/checkpoint/{run}/async`) and without (`checkpointing: false` in the app: one call per
step), and the same Python-native function run in-process by that `stepwise dev`. Each runs
`runs` times one after the other (after 3 warm-up runs), and one JSON line is printed:
per-step milliseconds (median, p90) from each run's start to its end, divided by its steps,
and each SDK function's median over the native one's. `typescript_sdk_alone` is the
checkpointing function's SDK by itself (`tests/sdk/ts/bench_floor.ts`: called as stepwise calls
it, with a stand-in server that answers every checkpoint at once and stores nothing): what a
step costs before stepwise does anything.
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
STEPS = 10
WARM_UP = 3
#: What is measured: a name, and the event that starts its function.
FUNCTIONS = (("native", "bench.native"), ("python_sdk", "bench.py"),
             ("typescript_sdk_checkpointing", "bench.ts"),
             ("typescript_sdk_classic", "bench.ts.classic"))


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
    for _ in range(runs + WARM_UP):  # the first runs warm up and are left out
        (event_id,) = call("POST", base + "/e/bench", {"name": event, "data": {}})["ids"]

        def done(event_id: str = event_id) -> dict[str, Any] | None:
            found = call("GET", f"{base}/api/v1/events/{event_id}")["runs"]
            return found[0] if found and found[0]["status"] == "completed" else None
        run = until(done)
        figures.append((ms(run["ended_at"]) - ms(run["started_at"])) / STEPS)
    return figures[WARM_UP:]


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
        subprocess.Popen([sys.executable, "-m", "stepwise.cli", "dev",
                          "bench.sdk.native_steps:app", "--port", str(base_port),
                          "--db", options.db or str(tmp / "dev.db"),
                          "-u", f"http://127.0.0.1:{py_port}/api/inngest",
                          "-u", f"http://127.0.0.1:{ts_port}/api/inngest"],
                         cwd=tmp, env=env, stdout=log, stderr=log, start_new_session=True)]
    try:
        until(lambda: len(call("GET", base + "/api/v1/functions")["functions"]) == 4)
        result: dict[str, Any] = {"steps": STEPS, "runs": options.runs,
                                  "db": "postgresql" if options.db else "sqlite"}
        for name, event in FUNCTIONS:
            figures = sorted(per_step(base, event, options.runs))
            result[f"{name}_per_step_ms_median"] = round(statistics.median(figures), 3)
            result[f"{name}_per_step_ms_p90"] = round(figures[int(len(figures) * 0.9) - 1], 3)
        # The TypeScript SDK alone (a stand-in server answers each checkpoint at once):
        # what a checkpointed step costs before stepwise stores anything.
        alone = json.loads(subprocess.run(
            [str(TS / "node_modules" / ".bin" / "tsx"), "bench_floor.ts", str(options.runs)],
            cwd=TS, env=env, capture_output=True, text=True, check=True,
            timeout=300).stdout.strip().splitlines()[-1])
        result["typescript_sdk_alone_per_step_ms_median"] = alone["per_step_ms_median"]
        result["typescript_sdk_alone_per_step_ms_p90"] = alone["per_step_ms_p90"]
        native = result["native_per_step_ms_median"]
        for name, _ in FUNCTIONS[1:]:
            result[f"{name}_vs_native"] = round(result[f"{name}_per_step_ms_median"] / native, 2)
        print(json.dumps(result))
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
