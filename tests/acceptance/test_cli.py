"""The CLI against a real `stepwise dev`: send, runs, replay, prune, erase, and clear errors."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from procs import STEPWISE, free_port, http, start, stop, wait_healthy, wait_until

APP = textwrap.dedent('''
    import os
    from pathlib import Path
    import stepwise

    app = stepwise.App("cli")

    def deliver(to):
        if not (Path(os.environ["CLI_DIR"]) / "fixed").exists():
            raise RuntimeError("SMTP relay refused " + to)
        return "delivered to " + to

    @app.function(id="mail", trigger=stepwise.on_event("mail.send"), retries=0)
    async def mail(ctx):
        return await ctx.step.run("deliver", deliver, ctx.event.data["to"])
''')


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STEPWISE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30)


def test_send_runs_replay(tmp_path: Path) -> None:
    (tmp_path / "cli_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "cli_app:app", "--port", str(port)], tmp_path,
                 {"CLI_DIR": str(tmp_path)})
    try:
        wait_healthy(base, proc)
        assert (tmp_path / ".stepwise" / "stepwise.db").exists()
        sent = cli("send", "mail.send", '{"to": "ada@example.com"}', "--url", base, cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        event_id = sent.stdout.strip()

        def failed_run() -> str | None:
            runs = http("GET", f"{base}/api/v1/runs?event_id={event_id}&status=failed")["runs"]
            return runs[0]["id"] if runs else None

        run_id = wait_until(failed_run, what="the run to fail")
        listing = cli("runs", "--status", "failed", "--url", base, cwd=tmp_path)
        assert run_id in listing.stdout and "SMTP relay refused" in listing.stdout
        header, row = listing.stdout.splitlines()[:2]
        assert header.split() == ["RUN", "FUNCTION", "STATUS", "FAILURES", "REPLAYS",
                                  "STARTED", "ERROR"]
        assert row.split()[:5] == [run_id, "mail", "failed", "1", "0"]
        recent = cli("runs", "--event", "mail.send", "--since", "10m", "--url", base,
                     cwd=tmp_path)
        assert run_id in recent.stdout
        assert "no runs" in cli("runs", "--event", "other", "--url", base, cwd=tmp_path).stdout
        shown = cli("run", run_id, "--url", base, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert f"event     mail.send {event_id}" in shown.stdout
        assert ["deliver", "failed", "1"] in [line.split()[:3] for line in
                                              shown.stdout.splitlines()]
        assert "failed attempt 1 of step deliver" in shown.stdout
        assert '  File "' in shown.stdout and "RuntimeError: SMTP relay refused" in shown.stdout
        listed = cli("events", "--name", "mail.send", "--url", base, cwd=tmp_path)
        assert event_id in listed.stdout and '"to": "ada@example.com"' in listed.stdout
        console = "".join(p.read_text() for p in tmp_path.glob("proc-*.log"))
        assert f"run {run_id} mail: step 'deliver' failed for good after 1 attempts: " \
               "SMTP relay refused" in console

        (tmp_path / "fixed").touch()
        replayed = cli("replay", run_id, "--url", base, cwd=tmp_path)
        assert replayed.returncode == 0, replayed.stderr
        assert "attempt 2" in replayed.stdout
        run = wait_until(lambda: (r := http("GET", f"{base}/api/v1/runs/{run_id}"))["status"]
                         == "completed" and r, what="the replay to complete")
        assert run["output"] == "delivered to ada@example.com"

        bad = cli("send", "mail.send", "[1, 2]", "--url", base, cwd=tmp_path)
        assert bad.returncode != 0 and "DATA must be a JSON object" in bad.stderr
        missing = cli("replay", "no-such-run", "--url", base, cwd=tmp_path)
        assert missing.returncode != 0 and "not found" in missing.stderr
    finally:
        stop(proc)


def test_cli_reports_unreachable_server_and_bad_app(tmp_path: Path) -> None:
    down = cli("runs", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert down.returncode != 0 and "cannot reach stepwise" in down.stderr
    bad_app = cli("dev", "nonexistent_module:app", cwd=tmp_path)
    assert bad_app.returncode != 0 and "cannot import 'nonexistent_module'" in bad_app.stderr
    (tmp_path / "cli_app.py").write_text(APP)
    no_attr = cli("dev", "cli_app:nope", cwd=tmp_path)
    assert no_attr.returncode != 0 and "has no attribute 'nope'" in no_attr.stderr
    bad_path = cli("dev", "cli_app:app", "--db", "/proc/no/such/dir/x.db", cwd=tmp_path)
    assert bad_path.returncode != 0 and "Traceback" not in bad_path.stderr
    assert "cannot open the database /proc/no/such/dir/x.db" in bad_path.stderr


def test_a_missing_database_is_named_in_one_line(pg_schema: str, tmp_path: Path) -> None:
    from urllib.parse import urlsplit, urlunsplit

    (tmp_path / "cli_app.py").write_text(APP)
    missing = urlunsplit(urlsplit(pg_schema)._replace(path="/no_such_database_here", query=""))
    no_db = cli("worker", "cli_app:app", "--db", missing, cwd=tmp_path)
    assert no_db.returncode != 0 and "Traceback" not in no_db.stderr
    assert 'database "no_such_database_here" does not exist' in no_db.stderr


def test_limits_are_configurable_from_the_command_line(tmp_path: Path) -> None:
    import urllib.error

    (tmp_path / "cli_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "cli_app:app", "--port", str(port), "--max-event-bytes", "100"],
                 tmp_path, {"CLI_DIR": str(tmp_path)})
    try:
        wait_healthy(base, proc)
        assert http("POST", base + "/api/v1/events", {"name": "x", "data": {"a": 1}})["ids"]
        try:
            http("POST", base + "/api/v1/events", {"name": "x", "data": {"a": "y" * 200}})
            raise AssertionError("an event over --max-event-bytes was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 413
            assert "limit of 100 bytes" in exc.read().decode()
    finally:
        stop(proc)


DEFINITION_MISTAKES = {
    "bad_cron": ('trigger=stepwise.on_cron("61 * * * *")', "invalid cron expression"),
    "bad_step": ('trigger=stepwise.on_cron("*/61 * * * *")', "invalid cron expression"),
    "bad_key": ('trigger=stepwise.on_event("a"), concurrency=stepwise.Concurrency(2, '
                'key="event.data.((")', "Concurrency: key: invalid expression"),
}


def test_definition_mistakes_are_one_line_naming_the_file(tmp_path: Path) -> None:
    for name, (options, expected) in DEFINITION_MISTAKES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f'''
            import stepwise
            app = stepwise.App("x")
            @app.function(id="f", {options})
            async def f(ctx):
                pass
        '''))
        result = cli("dev", f"{name}:app", "--port", str(free_port()), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert f"{name}.py:4: " in result.stderr and expected in result.stderr, result.stderr
    (tmp_path / "dup.py").write_text(textwrap.dedent('''
        import stepwise
        app = stepwise.App("x")
        @app.function(id="f", trigger=stepwise.on_event("a"))
        async def f(ctx):
            pass
        @app.function(id="f", trigger=stepwise.on_event("a"))
        async def g(ctx):
            pass
    '''))
    dup = cli("dev", "dup:app", "--port", str(free_port()), cwd=tmp_path)
    assert dup.returncode == 2 and "Traceback" not in dup.stderr
    assert "function id 'f' is already used in app 'x'" in dup.stderr


def test_prune_and_erase(tmp_path: Path) -> None:
    """`stepwise prune` (the contract's command) and `stepwise erase` against `stepwise dev`,
    through the API, as an operator types them."""
    (tmp_path / "cli_app.py").write_text(APP)
    (tmp_path / "fixed").touch()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "cli_app:app", "--port", str(port)], tmp_path,
                 {"CLI_DIR": str(tmp_path)})
    try:
        wait_healthy(base, proc)
        for to in ("ada@example.com", "bob@example.com"):
            assert cli("send", "mail.send", json.dumps({"to": to}), "--url", base,
                       cwd=tmp_path).returncode == 0
        wait_until(lambda: len([r for r in http("GET", f"{base}/api/v1/runs")["runs"]
                                if r["status"] == "completed"]) == 2, what="two runs")
        bad = cli("prune", "--older-than", "1 day", "--url", base, cwd=tmp_path)
        assert bad.returncode != 0 and "not a duration" in bad.stderr
        dry = cli("erase", "--event-data", "to=ada@example.com", "--dry-run", "--url", base,
                  cwd=tmp_path)
        assert dry.stdout.strip() == "would delete 1 events and 1 runs (0 unfinished)", dry
        erased = cli("erase", "--event-data", "to=ada@example.com", "--url", base,
                     cwd=tmp_path)
        assert erased.stdout.strip() == "erased 1 events, 1 runs, 1 steps", erased
        counted = cli("prune", "--older-than", "1ms", "--dry-run", "--url", base, cwd=tmp_path)
        assert counted.stdout.strip() == \
            "would delete 1 runs (1 completed), 1 steps, 1 events", counted
        pruned = cli("prune", "--older-than", "1ms", "--url", base, cwd=tmp_path)
        assert pruned.stdout.strip() == "deleted 1 runs, 1 steps, 1 events", pruned
        assert http("GET", f"{base}/api/v1/runs")["runs"] == []
    finally:
        stop(proc)
