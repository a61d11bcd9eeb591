"""Poison code beside normal runs on one real `stepwise dev` process: a busy loop and a
`time.sleep` in async body code, a blocking plain step in an async function, and process
steps that grow without bound, call os._exit, or segfault. The normal runs keep completing
within seconds, /healthz answers throughout, each poison run ends with an error naming its
cause, and SIGTERM is honoured within the grace period. Then CPU-bound steps in processes
run on two cores at once."""

from __future__ import annotations

import os
import signal
import textwrap
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from procs import free_port, http, start, stop, wait_healthy, wait_until

APP = textwrap.dedent('''
    import ctypes
    import os
    import time
    from datetime import timedelta

    import stepwise

    app = stepwise.App("poison")


    def grow():
        hoard = []
        while True:
            hoard.append(bytearray(20 * 1024 * 1024))
            time.sleep(0.02)


    def exit_1():
        os._exit(1)


    def segfault():
        ctypes.string_at(0)


    def nap():
        time.sleep(3600)


    def burn(n, rendezvous):
        """CPU-bound; first waits (up to 60 s) until the other branch runs too, in its own
        process: they finish only if two processes run them at once."""
        started = time.time()
        os.makedirs(rendezvous, exist_ok=True)
        open(os.path.join(rendezvous, str(os.getpid())), "w").close()
        while len(os.listdir(rendezvous)) < 2:
            if time.time() - started > 60:
                raise RuntimeError("the other branch never ran alongside")
            time.sleep(0.01)
        x = 0
        for i in range(n):
            x += i * i
        return {"pid": os.getpid(), "start": started, "end": time.time()}


    @app.function(id="normal", trigger=stepwise.on_event("normal"), retries=0)
    async def normal(ctx):
        return await ctx.step.run("work", lambda: ctx.event.data["i"])


    @app.function(id="normal-sync", trigger=stepwise.on_event("normal"), retries=0)
    def normal_sync(ctx):
        return ctx.step.run("work", lambda: ctx.event.data["i"])


    @app.function(id="spin-async", trigger=stepwise.on_event("spin-async"), retries=0)
    async def spin_async(ctx):
        while True:
            pass


    @app.function(id="sleep-async", trigger=stepwise.on_event("sleep-async"), retries=0)
    async def sleep_async(ctx):
        time.sleep(3600)


    @app.function(id="block-step", trigger=stepwise.on_event("block-step"), retries=0,
                  attempt_timeout=timedelta(seconds=3))
    async def block_step(ctx):
        return await ctx.step.run("block", time.sleep, 3600)


    @app.function(id="grow", trigger=stepwise.on_event("grow"), retries=0, executor="process")
    async def grow_fn(ctx):
        await ctx.step.run("grow", grow)


    @app.function(id="exit", trigger=stepwise.on_event("exit"), retries=0, executor="process")
    async def exit_fn(ctx):
        await ctx.step.run("exit", exit_1)


    @app.function(id="segfault", trigger=stepwise.on_event("segfault"), retries=0,
                  executor="process")
    def segfault_fn(ctx):
        ctx.step.run("segfault", segfault)


    @app.function(id="nap", trigger=stepwise.on_event("nap"), retries=0, executor="process")
    async def nap_fn(ctx):
        await ctx.step.run("nap", nap)


    @app.function(id="burn", trigger=stepwise.on_event("burn"), retries=0, executor="process")
    async def burn_fn(ctx):
        where = ctx.event.data["rendezvous"]
        return await ctx.step.parallel(lambda: ctx.step.run("a", burn, 3_000_000, where),
                                       lambda: ctx.step.run("b", burn, 3_000_000, where))
''')

GRACE_S = 2.0
POISON = {  # function: what its error must say
    "spin-async": ("LoopStalled", "poison_app.py:"),
    "sleep-async": ("LoopStalled", "in sleep_async"),
    "block-step": ("AttemptTimeout", "step 'block' ran longer than"),
    "grow": ("ChildDied", "over the bound of 300 MB"),
    "exit": ("ChildDied", "exited with status 1"),
    "segfault": ("ChildDied", "SIGSEGV"),
}


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def test_poison_code_beside_normal_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "poison_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "poison_app:app", "--port", str(port), "--db", str(tmp_path / "p.db"),
                  "--grace-seconds", str(GRACE_S), "--loop-stall-seconds", "1",
                  "--max-memory-per-child", "300", "--processes", "2"], tmp_path)
    try:
        wait_healthy(base, proc)
        sent_at: dict[str, float] = {}
        for name in POISON:
            http("POST", base + "/api/v1/events", {"name": name})
        for i in range(30):  # normal runs keep arriving while the poison runs
            sent_at[str(i)] = time.time() * 1000
            http("POST", base + "/api/v1/events", {"name": "normal", "data": {"i": i},
                                                   "id": f"normal-{i}"})
            began = time.monotonic()
            with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
                assert response.status == 200
            assert time.monotonic() - began < 1.0, "/healthz was slow"
            time.sleep(0.2)

        def ended() -> list[dict[str, Any]] | None:
            runs = http("GET", base + "/api/v1/runs?limit=200")["runs"]
            done = [r for r in runs if r["status"] in ("completed", "failed")]
            return runs if len(done) == len(POISON) + 60 else None
        runs = wait_until(ended, 60, "every run to end")
        by_function: dict[str, list[dict[str, Any]]] = {}
        for run in runs:
            by_function.setdefault(run["function_id"], []).append(run)
        for function in ("normal", "normal-sync"):
            assert {r["status"] for r in by_function[function]} == {"completed"}
            assert sorted(r["output"] for r in by_function[function]) == list(range(30))
            slowest = max(_ms(r["ended_at"]) - sent_at[str(r["output"])]
                          for r in by_function[function])
            # Two runs stall the loop in turn (1 s each before they are noticed), and the
            # busy loop's thread spins on (Python cannot stop it), taking its share of the GIL.
            assert slowest < 8000, f"a normal run of {function} took {slowest:.0f} ms"
            print(f"{function}: slowest run ended {slowest:.0f} ms after its event")
        for function, (name, says) in POISON.items():
            [run] = by_function[function]
            detail = http("GET", base + f"/api/v1/runs/{run['id']}")
            assert detail["status"] == "failed", (function, detail)
            assert detail["error"]["name"] == name and says in detail["error"]["message"], \
                (function, detail["error"])

        # CPU-bound steps in processes: two children, at once.
        http("POST", base + "/api/v1/events", {"name": "burn",
                                               "data": {"rendezvous": str(tmp_path / "r")}})
        burned = wait_until(lambda: [r for r in http("GET", base + "/api/v1/runs?function=burn")
                                     ["runs"] if r["status"] == "completed"], 60, "burn")
        a, b = http("GET", base + f"/api/v1/runs/{burned[0]['id']}")["output"]
        assert a["pid"] != b["pid"] and os.getpid() not in (a["pid"], b["pid"])
        assert a["start"] < b["end"] and b["start"] < a["end"], "the two steps did not overlap"

        # SIGTERM while a process step sleeps: the worker stops within its grace period and
        # its children go with it.
        import psutil  # type: ignore[import-untyped, unused-ignore]

        http("POST", base + "/api/v1/events", {"name": "nap"})
        wait_until(lambda: [r for r in http("GET", base + "/api/v1/runs?function=nap")["runs"]
                            if r["status"] == "running"], 30, "the nap step to start")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no child process runs the step"
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(GRACE_S + 10)
        took = time.monotonic() - began
        assert took < GRACE_S + 4, f"SIGTERM took {took:.1f} s"
        gone = wait_until(lambda: not any(c.is_running() and c.status() != "zombie"
                                          for c in children), 5, "the children to exit")
        assert gone
    finally:
        stop(proc)
    log = "".join(p.read_text() for p in tmp_path.glob("proc-*.log"))
    assert "froze its event loop" in log
