"""`stepwise worker --sdk --sdk-allow-host`: the worker calls SDK apps only at the hosts it is
given, whatever the stored syncs say. A sync stored by an older server, or by a server
started without the list, may point a function anywhere; the worker then sends that run's
data nowhere and fails it, naming the host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.acceptance.procs import (
    ScriptedApp,
    free_port,
    http,
    start,
    stop,
    wait_healthy,
    wait_until,
)


def test_a_worker_calls_sdk_apps_only_at_its_allowed_hosts(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def answer(call: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        calls.append(call)
        return 200, {}, {"charged": call["body"]["event"]["data"]["order"]}

    app = ScriptedApp(answer)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = str(tmp_path / "s.db")
    # A server with no host list (or an older one) accepts a sync at any host.
    server = start(["server", "--insecure", "--port", str(port), "--host", "127.0.0.1",
                    "--db", db], tmp_path)
    strict = None
    loose = None
    try:
        wait_healthy(base, server)
        synced = http("POST", base + "/fn/register", {
            "appName": "shop", "url": app.url, "v": "0.1", "sdk": "js:v4.24.0",
            "framework": "express", "functions": [{
                "id": "shop-charge", "name": "charge", "triggers": [{"event": "order.paid"}],
                "steps": {"step": {"id": "step", "name": "step",
                                   "runtime": {"type": "http", "url": app.url}}}}]})
        assert synced["ok"] is True
        strict = start(["worker", "--sdk", "--db", db, "--sdk-allow-host", "shop.internal",
                        "--sdk-allow-host", "SHOP-2.internal"], tmp_path)
        (first,) = http("POST", base + "/api/v1/events",
                        {"name": "order.paid", "data": {"order": "o-1"}})["ids"]

        def ended(event_id: str) -> dict[str, Any] | None:
            runs = http("GET", f"{base}/api/v1/events/{event_id}")["runs"]
            run = http("GET", base + runs[0]["url"]) if runs else None
            return run if run and run["status"] in ("completed", "failed") else None
        run = wait_until(lambda: ended(first), 60, "the strict worker's refusal")
        assert run["status"] == "failed", run
        assert run["error"]["name"] == "AppHostNotAllowed", run["error"]
        assert "'127.0.0.1'" in run["error"]["message"] and \
            "--sdk-allow-host" in run["error"]["message"]
        assert calls == []  # nothing was sent to the app
        stop(strict)
        strict = None
        # Allowed (as the environment variable, space-separated): the app is called.
        loose = start(["worker", "--sdk", "--db", db], tmp_path,
                      {"STEPWISE_SDK_ALLOW_HOSTS": "shop.internal 127.0.0.1"})
        (second,) = http("POST", base + "/api/v1/events",
                         {"name": "order.paid", "data": {"order": "o-2"}})["ids"]
        run = wait_until(lambda: ended(second), 60, "the allowed call")
        assert run["status"] == "completed" and run["output"] == {"charged": "o-2"}, run
        assert [c["body"]["event"]["data"] for c in calls] == [{"order": "o-2"}]
    finally:
        for proc in (strict, loose, server):
            if proc is not None:
                stop(proc)
        app.close()


def test_the_worker_refuses_a_host_list_that_is_not_host_names(tmp_path: Path) -> None:
    import subprocess

    from tests.acceptance.procs import STEPWISE

    for args, words in ((["--sdk-allow-host", "http://shop.internal"], "is not a host name"),
                        (["--sdk-allow-host", "shop.internal:3000"], "is not a host name")):
        done = subprocess.run([*STEPWISE, "worker", "--sdk", "--db", str(tmp_path / "s.db"),
                               *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and words in done.stderr, done.stderr
    done = subprocess.run([*STEPWISE, "worker", "tests.sdk.native_app:app", "--db",
                           str(tmp_path / "s.db"), "--sdk-allow-host", "shop.internal"],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 2 and "add --sdk" in done.stderr, done.stderr
