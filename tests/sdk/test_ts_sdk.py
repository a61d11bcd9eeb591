"""Apps written with Inngest's official TypeScript SDK run unchanged on stepwise: the 4.x SDK on
Express 5 (`ts/shop.ts`) and the seeds' 3.x form on Express 4 (`ts/seed.ts`), each a real
Node process (tsx), beside a Python-native app, through `stepwise dev -u URL`."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, kill9, start, stop, wait_healthy, wait_until

TS = Path(__file__).resolve().parent / "ts"
ROOT = TS.parents[2]


def node_apps_ready() -> None:
    """The apps' packages are installed by `.ci/run` (`npm ci`); in CI their absence fails."""
    missing = [what for what, ok in (("node", shutil.which("node") is not None),
                                     ("tests/sdk/ts/node_modules",
                                      (TS / "node_modules" / ".bin" / "tsx").exists())) if not ok]
    if missing:
        message = f"{', '.join(missing)} missing: run `npm ci --prefix tests/sdk/ts`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def start_node_app(script: str, port: int, env: dict[str, str], log: Path
                   ) -> subprocess.Popen[str]:
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(TS / "node_modules" / ".bin" / "tsx"), script], cwd=TS, stdout=out,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")},
                 **env, "PORT": str(port)})


class Stack:
    def __init__(self, base: str, shop_url: str) -> None:
        self.base = base
        self.shop_url = shop_url

    def send(self, *events: dict[str, Any]) -> list[str]:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET", list(events))
        assert answer["status"] == 200
        return list(answer["ids"])

    def runs_of(self, event_id: str) -> list[dict[str, Any]]:
        return list(http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"])

    def run_of(self, event_id: str, function_id: str, status: str | tuple[str, ...],
               timeout: float = 60) -> dict[str, Any]:
        wanted = (status,) if isinstance(status, str) else status

        def found() -> dict[str, Any] | None:
            run = next((r for r in self.runs_of(event_id) if r["function_id"] == function_id),
                       None)
            return run if run is not None and run["status"] in wanted else None
        run = wait_until(found, timeout, f"{function_id} {status} for {event_id}")
        return dict(http("GET", self.base + run["url"]))

    def wake(self, run_id: str) -> None:
        http("POST", f"{self.base}/api/v1/runs/{run_id}/wake")

    def app_state(self) -> dict[str, Any]:
        return dict(http("GET", self.shop_url.replace("/api/inngest", "/test/state")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    node_apps_ready()
    tmp = tmp_path_factory.mktemp("ts")
    port, shop_port, seed_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"INNGEST_DEV": base}
    apps = [start_node_app("shop.ts", shop_port, env, tmp / "shop.log"),
            start_node_app("seed.ts", seed_port, env, tmp / "seed.log")]
    shop_url = f"http://127.0.0.1:{shop_port}/api/inngest"
    dev = start(["dev", "tests.sdk.native_app:app", "-u", shop_url,
                 "-u", f"http://127.0.0.1:{seed_port}/api/inngest",
                 "--port", str(port), "--db", str(tmp / "dev.db")], tmp,
                {"PYTHONPATH": str(ROOT)})
    try:
        wait_healthy(base, dev)

        def synced() -> bool:
            return len(http("GET", base + "/api/v1/functions")["functions"]) == 19
        wait_until(synced, 90, "the TypeScript apps' sync")
        yield Stack(base, shop_url)
    finally:
        stop(dev)
        for app in apps:
            stop(app)


def test_both_sdk_versions_sync_their_functions(stack: Stack) -> None:
    functions = {f["id"]: f for f in http("GET", stack.base + "/api/v1/functions")["functions"]}
    assert functions["ts-shop-signup"]["app_id"] == "ts-shop"
    assert functions["ts-shop-signup"]["retries"] == 3
    assert functions["seed-app-hello-world"]["triggers"] == [{"event": "test/hello.world"}]
    assert functions["ts-shop-nightly"]["triggers"] == [{"cron": "0 3 * * *",
                                                         "tz": "Europe/Paris"}]
    assert functions["ts-shop-export"]["flow"]["concurrency"] == [
        {"limit": 1, "key": "event.data.account", "scope": "fn"}]
    assert functions["ts-shop-charge-failure"]["triggers"] == [{
        "event": "inngest/function.failed",
        "expression": "event.data.function_id == 'ts-shop-charge'"}]


def test_signup_fans_out_and_a_step_failing_twice_then_succeeds(stack: Stack) -> None:
    (event_id,) = stack.send({"name": "user.signup", "data": {"user_id": 1}})
    signup = stack.run_of(event_id, "ts-shop-signup", "completed")
    assert signup["output"] == {"email": "user1@example.com",
                                "subscribed": "subscribed user1@example.com after 3 attempts"}
    # Steps are stored under the SDK's hashed ids and shown with the code's names.
    assert [s["name"] for s in signup["steps"]] == ["load-user", "subscribe"]
    assert signup["steps"][0]["id"] == hashlib.sha1(b"load-user").hexdigest()
    failed = [f for f in signup["failures"] if f["step_id"]]
    assert len(failed) == 2 and "mailing-list API timed out" in failed[0]["error"]["message"]
    assert stack.run_of(event_id, "ts-shop-welcome", "completed")["output"] == \
        "welcome mail to user 1"
    # The Python-native function on the same event ran too (it invokes an app absent here).
    assert stack.run_of(event_id, "greet-signup", "failed")["error"]["name"] == "InvokeFailed"


def test_drip_sleeps_then_waits_for_a_match_or_times_out(stack: Stack) -> None:
    booked, silent = stack.send({"name": "user.signup", "data": {"user_id": 21}},
                                {"name": "user.signup", "data": {"user_id": 22}})
    for event_id in (booked, silent):  # 4 days of sleep, ended by an operator's wake
        run = stack.run_of(event_id, "ts-shop-drip", "sleeping")
        assert run["steps"][0]["status"] == "sleeping"
        stack.wake(run["id"])
    stack.run_of(booked, "ts-shop-drip", "waiting")
    waiting = stack.run_of(silent, "ts-shop-drip", "waiting")
    stack.send({"name": "booking.created", "data": {"user_id": 99, "booking_id": "other"}},
               {"name": "booking.created", "data": {"user_id": 21, "booking_id": "b-21"}})
    assert stack.run_of(booked, "ts-shop-drip", "completed")["output"] == "booked b-21"
    stack.wake(waiting["id"])  # its 3-day timeout, now
    assert stack.run_of(silent, "ts-shop-drip", "completed")["output"] == "no booking"


def test_on_failure_runs_once_when_retries_run_out(stack: Stack) -> None:
    declined, stolen = stack.send({"name": "order.charge", "data": {}},
                                  {"name": "order.charge", "data": {"refuse": True}})
    run = stack.run_of(declined, "ts-shop-charge", "failed")
    # retries: 1 -> one retried failure, then the last attempt's error fails the run.
    assert [f["attempt"] for f in run["failures"]] == [1]
    assert run["error"]["message"] == "card declined"
    refused = stack.run_of(stolen, "ts-shop-charge", "failed")  # NonRetriableError: no retry
    assert refused["failures"] == [] and refused["error"]["message"] == "card reported stolen"

    def handlers() -> list[dict[str, Any]] | None:
        found = http("GET", stack.base + "/api/v1/runs?function=ts-shop-charge-failure")["runs"]
        done = [r for r in found if r["status"] == "completed"]
        return done if len(done) >= 2 else None
    done = wait_until(handlers, 60, "the onFailure handlers")
    assert sorted(http("GET", stack.base + r["url"])["output"] for r in done) == [
        "handled: card declined", "handled: card reported stolen"]


def test_parallel_steps(stack: Stack) -> None:
    (event_id,) = stack.send({"name": "basket.checked", "data": {}})
    run = stack.run_of(event_id, "ts-shop-basket", "completed")
    assert run["output"] == {"tea": 3, "cake": 5, "total": 8}
    assert sorted(s["status"] for s in run["steps"]) == ["completed"] * 3


def test_invoke_across_apps_languages_and_sdk_versions(stack: Stack) -> None:
    (event_id,) = stack.send({"name": "order.placed", "data": {"amount": 100}})
    run = stack.run_of(event_id, "ts-shop-checkout", "completed")
    assert run["output"] == {"taxed": {"tax": 20},
                             "hello": {"message": "Hello buyer@example.com!"}}
    assert sorted(c["function_id"] for c in run["children"]) == ["seed-app-hello-world", "tax"]


def test_the_seeds_3x_function_sleeps_and_waits_with_a_condition(stack: Stack) -> None:
    (event_id,) = stack.send({"name": "app/reminder.set", "data": {"id": "r1"}})
    stack.wake(stack.run_of(event_id, "seed-app-reminder", "sleeping")["id"])
    stack.run_of(event_id, "seed-app-reminder", "waiting")
    stack.send({"name": "app/reminder.ack", "data": {"id": "other"}},
               {"name": "app/reminder.ack", "data": {"id": "r1"}})
    assert stack.run_of(event_id, "seed-app-reminder", "completed")["output"] == \
        "acknowledged r1"


def test_concurrency_with_a_key_runs_one_at_a_time_per_key(stack: Stack) -> None:
    ids = stack.send(*({"name": "export.requested", "data": {"account": "acme", "part": i}}
                       for i in range(3)),
                     {"name": "export.requested", "data": {"account": "zeta", "part": 9}})
    for event_id in ids:
        stack.run_of(event_id, "ts-shop-export", "completed")
    spans = sorted(stack.app_state()["spans"]["acme"])
    assert len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


def test_debounce_runs_once_with_the_last_event(stack: Stack) -> None:
    ids = stack.send(*({"name": "digest.requested", "data": {"user_id": 5, "n": n}}
                       for n in (1, 2, 3)))
    run = stack.run_of(ids[-1], "ts-shop-digest", "completed")
    assert run["output"] == "digest after change 3"
    runs = http("GET", stack.base + "/api/v1/runs?function=ts-shop-digest")["runs"]
    assert len(runs) == 1


def test_cancel_on_a_matching_event(stack: Stack) -> None:
    kept, cancelled = stack.send({"name": "trial.started", "data": {"user_id": 1}},
                                 {"name": "trial.started", "data": {"user_id": 2}})
    stack.run_of(kept, "ts-shop-trial", "sleeping")
    stack.run_of(cancelled, "ts-shop-trial", "sleeping")
    stack.send({"name": "trial.converted", "data": {"user_id": 2}})
    stack.run_of(cancelled, "ts-shop-trial", "cancelled")
    assert stack.run_of(kept, "ts-shop-trial", "sleeping")["status"] == "sleeping"


def test_cloud_mode_on_postgresql_with_two_workers_survives_kill_9(
        pg_schema: str, tmp_path: Path) -> None:
    """The TypeScript app in cloud mode (signing key) against `stepwise server` on PostgreSQL
    and two `stepwise worker --sdk`: the worker executing a run is killed with SIGKILL mid-run,
    the other takes the run over, and the steps that had completed do not run again."""
    node_apps_ready()
    api_key, event_key = "api-" + "a" * 40, "event-" + "e" * 40
    signing_key = "signkey-prod-" + "7a" * 32
    port, shop_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {api_key}"}
    server = start(["server", "--db", pg_schema, "--port", str(port), "--host", "127.0.0.1",
                    "--api-key", api_key, "--event-key", event_key,
                    "--signing-key", signing_key], tmp_path)
    shop = start_node_app("shop.ts", shop_port, {
        "INNGEST_BASE_URL": base, "INNGEST_SIGNING_KEY": signing_key,
        "INNGEST_EVENT_KEY": event_key}, tmp_path / "shop.log")
    shop_url = f"http://127.0.0.1:{shop_port}/api/inngest"
    workers = [start(["worker", "--sdk", "--db", pg_schema, "--signing-key", signing_key,
                      "--lease-seconds", "2"], tmp_path) for _ in range(2)]
    try:
        wait_healthy(base, server)

        def synced() -> bool:  # the deploy's PUT: the app syncs itself with its key
            http("PUT", shop_url)
            return any(f["id"] == "ts-shop-long" for f in http(
                "GET", base + "/api/v1/functions", headers=auth)["functions"])
        wait_until(synced, 90, "the signed sync")
        answer = http("POST", f"{base}/e/{event_key}", {"name": "long.job", "data": {}})
        (event_id,) = answer["ids"]

        def midway() -> dict[str, Any] | None:
            runs = http("GET", f"{base}/api/v1/events/{event_id}", headers=auth)["runs"]
            if not runs:
                return None
            run = http("GET", base + runs[0]["url"], headers=auth)
            done = [s for s in run["steps"] if s["status"] == "completed"]
            return run if len(done) >= 2 and run.get("worker") else None
        run = wait_until(midway, 60, "two steps done")
        pid = int(run["worker"].split(":")[1])
        victim = next(w for w in workers if w.pid == pid)
        kill9(victim)
        done_before = {s["name"] for s in run["steps"] if s["status"] == "completed"}

        def completed() -> dict[str, Any] | None:
            got = http("GET", f"{base}/api/v1/runs/{run['id']}", headers=auth)
            return got if got["status"] == "completed" else None
        final = wait_until(completed, 90, "the run taken over")
        assert final["output"] == [0, 1, 2, 3, 4, 5]
        executions = http("GET", shop_url.replace("/api/inngest", "/test/state"))["executions"]
        counts = {key.split("/")[1]: n for key, n in executions.items()
                  if key.startswith(run["id"])}
        assert all(counts[name] == 1 for name in done_before), (done_before, counts)
        assert sorted(counts) == [f"part-{i}" for i in range(6)]
        assert sum(counts.values()) <= 7  # only the step in flight at the kill may run twice
    finally:
        for proc in (*workers, server, shop):
            stop(proc)


def _post(url: str, body: Any) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_a_signal_resumes_the_run_waiting_for_it(stack: Stack) -> None:
    """After the wait starts: `inngest.sendSignal` from another function resumes it with the
    signal's data. Before it starts: 404, and the wait then ends at its timeout (woken here)
    with null. A second run waiting for a signal another run waits for fails its step."""
    (waiting,) = stack.send({"name": "approval.requested", "data": {"id": 1}})
    run = stack.run_of(waiting, "ts-shop-approval", "waiting")
    (given,) = stack.send({"name": "approval.given", "data": {"id": 1, "by": "ada"}})
    done = stack.run_of(waiting, "ts-shop-approval", "completed")
    # the step's value as Inngest stores it; the SDK hands it to the code as it does events
    # (with a `user` field), which the function returns
    assert done["steps"][0]["output"] == {"signal": "approval-1", "data": {"by": "ada"}}
    assert {k: done["output"][k] for k in ("signal", "data")} == done["steps"][0]["output"]
    sent = stack.run_of(given, "ts-shop-approver", "completed")
    assert sent["output"] == {"runId": run["id"]}  # the SDK read our {"data": {"run_id"}}

    assert _post(stack.base + "/v1/signals", {"signal": "approval-2", "data": 1})[0] == 404
    (early,) = stack.send({"name": "approval.requested", "data": {"id": 2}})
    late = stack.run_of(early, "ts-shop-approval", "waiting")
    (rival,) = stack.send({"name": "approval.requested", "data": {"id": 2}})
    conflict = stack.run_of(rival, "ts-shop-approval", "failed")
    assert "Signal conflict" in json_text(conflict)
    stack.wake(late["id"])  # as at its timeout
    assert stack.run_of(early, "ts-shop-approval", "completed")["output"] is None
    assert _post(stack.base + "/v1/signals", {"signal": "approval-2"})[0] == 404
    for bad in ({}, {"signal": ""}, {"signal": 5}, ["approval-2"]):
        status, answer = _post(stack.base + "/v1/signals", bad)
        assert status == 400 and "signal" in answer["error"], (bad, answer)


def json_text(value: Any) -> str:
    import json

    return json.dumps(value)


def test_singleton_skip_with_a_key(stack: Stack) -> None:
    first, second, other = stack.send(
        {"name": "account.sync", "data": {"account": "a"}},
        {"name": "account.sync", "data": {"account": "a"}},
        {"name": "account.sync", "data": {"account": "b"}})
    holder = stack.run_of(first, "ts-shop-account-sync", "sleeping")
    skipped = stack.run_of(second, "ts-shop-account-sync", "skipped")
    assert skipped["error"]["name"] == "SingletonSkipped" and holder["id"] in skipped["error"][
        "message"]
    stack.run_of(other, "ts-shop-account-sync", "sleeping")
    stack.wake(holder["id"])
    assert stack.run_of(first, "ts-shop-account-sync", "completed")["output"] == "synced a"
