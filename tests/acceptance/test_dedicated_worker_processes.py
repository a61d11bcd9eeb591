"""Dedicated workers as real processes on PostgreSQL: `stepwise worker --functions heavy` runs
every `heavy` run, `stepwise worker --exclude heavy` every other; with the heavy worker gone,
new `heavy` runs wait, and the workers API says no live worker serves them. And the flags'
mistakes are usage errors."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

from procs import STEPWISE, free_port, http, start, stop, wait_healthy, wait_until

APP = textwrap.dedent('''
    import os
    import stepwise

    app = stepwise.App("pools")

    @app.function(id="heavy", trigger=stepwise.on_event("audio"), retries=0)
    def heavy(ctx):
        return os.getpid()

    @app.function(id="light", trigger=stepwise.on_event("signup"), retries=0)
    async def light(ctx):
        return os.getpid()

    @app.function(id="other", trigger=stepwise.on_event("signup"), retries=0)
    async def other(ctx):
        return await ctx.step.run("pid", os.getpid)
''')


def _runs(base: str, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in {"limit": "1000", **filters}.items())
    return list(http("GET", f"{base}/api/v1/runs?{query}")["runs"])


def test_each_pool_runs_its_functions_and_a_missing_pool_is_reported(
        pg_schema: str, tmp_path: Path) -> None:
    (tmp_path / "pools_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    common = ["--db", pg_schema, "--lease-seconds", "3", "--poll-seconds", "0.2",
              "--grace-seconds", "1"]
    server = start(["server", "--db", pg_schema, "--port", str(port), "--host", "127.0.0.1",
                    "--insecure"], tmp_path)
    heavy_worker = start(["worker", "pools_app:app", "--functions", "heavy",
                          "--function-concurrency", "heavy=1", *common], tmp_path)
    light_worker = start(["worker", "pools_app:app", "--exclude", "heavy", *common], tmp_path)
    try:
        wait_healthy(base, server)

        def both_live() -> dict[int, list[str]] | None:
            for proc in (heavy_worker, light_worker):
                if proc.poll() is not None:
                    raise AssertionError(f"a worker exited with {proc.returncode}")
            workers = http("GET", f"{base}/api/v1/workers")["workers"]
            live = {w["pid"]: w["functions"] for w in workers if w["live"]}
            return live if len(live) == 2 else None

        announced = wait_until(both_live, 60, "both workers to announce themselves")
        assert announced == {heavy_worker.pid: ["heavy"],
                             light_worker.pid: ["light", "other"]}

        events = [{"name": "audio", "data": {"i": i}} for i in range(8)]
        events += [{"name": "signup", "data": {"i": i}} for i in range(8)]
        http("POST", f"{base}/api/v1/events", events)

        def all_completed() -> bool:
            runs = _runs(base)
            return len(runs) == 24 and {r["status"] for r in runs} == {"completed"}

        wait_until(all_completed, 60, "every run to complete")
        by_function: dict[str, set[int]] = {}
        for run in _runs(base):
            by_function.setdefault(run["function_id"], set()).add(run["output"])
        assert by_function == {"heavy": {heavy_worker.pid}, "light": {light_worker.pid},
                               "other": {light_worker.pid}}

        stop(heavy_worker)  # SIGTERM: it says goodbye, and nobody serves `heavy` any more
        assert heavy_worker.returncode == 0
        later = [http("POST", f"{base}/api/v1/events", {"name": "audio", "data": {"late": i}})
                 ["ids"][0] for i in range(3)]
        # Sent after the heavy events: once it completes, the light worker has leased since.
        [last] = http("POST", f"{base}/api/v1/events", {"name": "signup", "data": {}})["ids"]
        wait_until(lambda: {r["status"] for r in _runs(base, event_id=last)} == {"completed"},
                   30, "the light runs sent last")
        for event_id in later:
            [run] = _runs(base, event_id=event_id)
            assert run["status"] == "queued", run

        listing = http("GET", f"{base}/api/v1/workers")
        live = [(w["pid"], w["functions"]) for w in listing["workers"] if w["live"]]
        assert live == [(light_worker.pid, ["light", "other"])]
        unserved = {u["function_id"]: u["queued"] for u in listing["unserved"]}
        assert unserved == {"heavy": 3}
        assert light_worker.poll() is None
    finally:
        for proc in (heavy_worker, light_worker, server):
            stop(proc)
    console = "".join(p.read_text() for p in tmp_path.glob("proc-*.log"))
    assert "app 'pools' serving 1 of its 3 functions: heavy (at most 1 heavy at once); " \
           "concurrency 10" in console
    assert "app 'pools' serving 2 of its 3 functions: light, other; concurrency 10" in console


def _workers(tmp_path: Path, *arg_lists: list[str]) -> list[tuple[int, str]]:
    """Start `stepwise worker ARGS` for each list at once; their exit statuses and stderr."""
    procs = [subprocess.Popen([*STEPWISE, "worker", *args, "--db",
                               f"sqlite:///{tmp_path / 'never.db'}"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in arg_lists]
    results = []
    for proc in procs:
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        results.append((proc.returncode, stderr))
    return results


def test_the_flags_mistakes_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "pools_app.py").write_text(APP)
    cases = [
        (["--function-concurrency", "heavy=0"], ["'heavy=0'", "positive integer"]),
        (["--function-concurrency", "heavy=lots"], ["'heavy=lots'", "positive integer"]),
        (["--function-concurrency", "heavy"], ["'heavy' is not ID=N"]),
        (["--function-concurrency", "nope=1"], ["'--function-concurrency'",
                                                "unknown function 'nope'"]),
        (["--functions", "nope"], ["'--functions'", "unknown function 'nope'",
                                   "app 'pools' has: heavy, light, other"]),
        (["--functions", "heavy,nope", "--functions", "zap"],
         ["unknown functions 'nope', 'zap'"]),
        (["--exclude", "nope"], ["'--exclude'", "unknown function 'nope'"]),
        (["--functions", "heavy", "--exclude", "heavy"], ["'--exclude'",
                                                          "would serve nothing"]),
        (["--exclude", "heavy,light,other"], ["would serve nothing"]),
        (["--functions", ","], ["'--functions'", "names no function"]),
        (["--exclude", "heavy", "--function-concurrency", "heavy=1"],
         ["'heavy' is not served by this worker"]),
        ([], ["name it (MODULE:APP)"])]  # the flag below, without an app
    arg_lists = [["pools_app:app", *args] for args, _ in cases[:-1]]
    arg_lists.append(["--sdk", "--functions", "heavy"])
    for (args, says), (status, stderr) in zip(cases, _workers(tmp_path, *arg_lists),
                                              strict=True):
        assert status == 2, (args, stderr)
        assert "Traceback" not in stderr
        for text in says:
            assert text in stderr, (args, stderr)
    assert not (tmp_path / "never.db").exists()  # refused before opening the database
