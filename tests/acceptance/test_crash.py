"""kill -9 a real `stepwise dev` process inside a step; the restarted one finishes the run."""

from __future__ import annotations

import textwrap
from pathlib import Path

from procs import free_port, http, kill9, start, stop, wait_healthy, wait_until

APP = textwrap.dedent('''
    import os, time
    from pathlib import Path
    import stepwise

    app = stepwise.App("crash")
    LOG = Path(os.environ["CRASH_DIR"]) / "effects.log"
    RELEASE = Path(os.environ["CRASH_DIR"]) / "release"

    def effect(name):
        with LOG.open("a") as f:
            f.write(name + "\\n")
            f.flush()
            os.fsync(f.fileno())
        return name

    def slow():
        effect("two-start")
        deadline = time.time() + 60
        while not RELEASE.exists():
            if time.time() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.02)
        return effect("two-done")

    @app.function(id="pipeline", trigger=stepwise.on_event("job"))
    def pipeline(ctx):
        a = ctx.step.run("one", effect, "one")
        b = ctx.step.run("two", slow)
        c = ctx.step.run("three", effect, "three")
        return [a, b, c]
''')


def test_kill_9_inside_a_step_then_restart_completes_the_run(db: str, tmp_path: Path) -> None:
    (tmp_path / "crash_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["dev", "crash_app:app", "--port", str(port), "--db", db, "--lease-seconds", "1"]
    env = {"CRASH_DIR": str(tmp_path)}
    log = tmp_path / "effects.log"

    first = start(args, tmp_path, env)
    try:
        wait_healthy(base, first)
        event_id = http("POST", base + "/api/v1/events", {"name": "job", "data": {}})["ids"][0]
        wait_until(lambda: log.exists() and "two-start" in log.read_text(), what="step two")
    finally:
        kill9(first)

    second = start(args, tmp_path, env)
    try:
        wait_healthy(base, second)
        (tmp_path / "release").touch()

        def finished() -> dict[str, object] | None:
            runs = http("GET", f"{base}/api/v1/runs?event_id={event_id}")["runs"]
            return runs[0] if runs and runs[0]["status"] == "completed" else None

        run = wait_until(finished, 30, "the run to complete after restart")
        detail = http("GET", f"{base}/api/v1/runs/{run['id']}")
    finally:
        stop(second)

    assert detail["output"] == ["one", "two-done", "three"]
    effects = log.read_text().split()
    # Step one finished before the crash: never again. Step two was interrupted: run again.
    assert effects == ["one", "two-start", "two-start", "two-done", "three"]
    assert [(s["id"], s["attempts"]) for s in detail["steps"]] == [
        ("one", 1), ("two", 1), ("three", 1)]
