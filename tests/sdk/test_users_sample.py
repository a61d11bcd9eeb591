"""The users' own Inngest function, byte for byte (`ts/users-sample/my-function.ts`, a copy of
shared/seed-sample), served by Express with the official npm SDK 3.x (as written) and 4.x (the
trigger moved into `triggers`), on SQLite and on PostgreSQL, through `stepwise dev -u URL`.

What the sample declares is what is checked: its sync (`concurrency: { limit: 5 }`,
`retries: 3`, an `onFailure`), three memoized steps once each, `{ success: true }`, at most 5
runs at once (and 5 reached), and `onFailure` running its own step when a step keeps failing.
The harness (`ts/users_sample.ts`) makes the sample's `final-step` fail for a payload containing
"[fail]" through the `console.log` it calls, without touching the sample's code."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until
from tests.sdk.test_ts_sdk import TS, node_apps_ready, start_node_app

SAMPLE = TS / "users-sample" / "my-function.ts"
SHARED = TS.parents[3] / "shared" / "seed-sample" / "my-function.ts"
#: How long the harness holds each call to the app, so that overlapping runs show.
CALL_DELAY_MS = 300
RUNS = 12


#: SHA-256 of the users' file as they published it (shared/seed-sample/my-function.ts).
USERS_SHA256 = "d4a2b5ff4587186699d8f4f438b48c11bfec40b503485ed743ad93aefb9224cd"


def test_the_sample_here_is_the_users_file_byte_for_byte() -> None:
    """The copy here is their file, unedited (compared with it where it is beside this
    checkout, and with its recorded hash everywhere)."""
    assert hashlib.sha256(SAMPLE.read_bytes()).hexdigest() == USERS_SHA256
    if SHARED.exists():
        assert SAMPLE.read_bytes() == SHARED.read_bytes()


class Sample:
    def __init__(self, base: str, app_url: str, app_id: str) -> None:
        self.base, self.app_url, self.app_id = base, app_url, app_id

    def send(self, *payloads: str) -> list[str]:
        answer = http("POST", self.base + "/e/NO_EVENT_KEY_SET",
                      [{"name": "my/event.triggered", "data": {"payload": p}} for p in payloads])
        assert answer["status"] == 200
        return list(answer["ids"])

    def run_of(self, event_id: str, status: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            runs = http("GET", f"{self.base}/api/v1/events/{event_id}")["runs"]
            return runs[0] if len(runs) == 1 and runs[0]["status"] == status else None
        run = wait_until(found, 90, f"the run of {event_id} {status}")
        return dict(http("GET", self.base + run["url"]))

    def app_state(self) -> dict[str, Any]:
        return dict(http("GET", self.app_url.replace("/api/inngest", "/test/state")))


@pytest.fixture(params=[("3", "sqlite"), ("4", "sqlite"), ("3", "postgres"), ("4", "postgres")],
                ids=lambda p: f"inngest{p[0]}x-{p[1]}")
def sample(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sample]:
    node_apps_ready()
    major, backend = request.param
    db = str(tmp_path / "dev.db") if backend == "sqlite" else \
        str(request.getfixturevalue("pg_schema"))
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app_id = f"users-sample-{major}x"
    app = start_node_app("users_sample.ts", app_port, {
        "INNGEST_DEV": base, "SAMPLE_SDK": major, "APP_ID": app_id,
        "SAMPLE_OUT": str(tmp_path / "sample"), "CALL_DELAY_MS": str(CALL_DELAY_MS)},
        tmp_path / "app.log")
    app_url = f"http://127.0.0.1:{app_port}/api/inngest"
    dev = start(["dev", "-u", app_url, "--port", str(port), "--db", db], tmp_path,
                {"PYTHONPATH": str(TS.parents[2])})
    try:
        wait_healthy(base, dev)

        def synced() -> bool:
            return len(http("GET", base + "/api/v1/functions")["functions"]) == 2
        wait_until(synced, 90, "the sample's sync")
        yield Sample(base, app_url, app_id)
    finally:
        stop(dev)
        stop(app)
        if os.environ.get("STEPWISE_KEEP_LOGS"):
            print((tmp_path / "app.log").read_text())


def test_the_users_sample_runs_unchanged(sample: Sample) -> None:
    functions = {f["id"]: f for f in http("GET", sample.base + "/api/v1/functions")["functions"]}
    main, handler = functions[f"{sample.app_id}-my-function"], \
        functions[f"{sample.app_id}-my-function-failure"]
    assert main["retries"] == 3 and "problems" not in main
    assert main["flow"]["concurrency"] == [{"limit": 5, "key": None, "scope": "fn"}]
    assert handler["triggers"] == [{"event": "inngest/function.failed", "expression":
                                    f"event.data.function_id == '{sample.app_id}-my-function'"}]
    apps = http("GET", sample.base + "/api/v1/apps")["apps"]
    assert [a["warnings"] for a in apps if a["id"] == sample.app_id] == [[]]

    payloads = [f"upload-{i}" for i in range(RUNS)]
    ids = sample.send(*payloads, "upload-[fail]")
    for payload, event_id in zip(payloads, ids, strict=False):
        run = sample.run_of(event_id, "completed")
        assert run["output"] == {"success": True}
        assert [(s["name"], s["status"], s["attempts"], s["output"]) for s in run["steps"]] == [
            ("step-1", "completed", 1, f"Processed {payload}"),
            ("step-2", "completed", 1, f"Processed {payload} -> step 2"),
            ("final-step", "completed", 1, None)]
    state = sample.app_state()
    finished = [line for line in state["logs"] if line.startswith("Finished processing:")]
    for payload in payloads:  # the final step's side effect happened once per run
        assert finished.count(f"Finished processing: Processed {payload} -> step 2") == 1
    # Twelve runs sent at once, each call held 300 ms: five at a time, never six.
    assert state["most"] == 5, state["most"]

    # `final-step` keeps failing: 1 attempt + 3 retries, then the run fails and onFailure runs
    # its own step. Each retry's backoff is ended by the operator's wake (no real-time wait).
    failing = ids[-1]

    def failed() -> dict[str, Any] | None:
        runs = http("GET", f"{sample.base}/api/v1/events/{failing}")["runs"]
        if not runs:
            return None
        run = http("GET", sample.base + runs[0]["url"])
        if run["status"] == "failed":
            return dict(run)
        if any(s["status"] == "retrying" for s in run["steps"]):
            http("POST", f"{sample.base}/api/v1/runs/{run['id']}/wake")
        return None
    run = wait_until(failed, 90, "the failing run to fail")
    final = next(s for s in run["steps"] if s["name"] == "final-step")
    assert final["status"] == "failed" and final["attempts"] == 4
    assert run["error"]["message"] == "cannot finish Processed upload-[fail] -> step 2"
    assert [f["attempt"] for f in run["failures"]] == [1, 2, 3, 4]

    def handled() -> dict[str, Any] | None:
        runs = http("GET", f"{sample.base}/api/v1/runs?function={sample.app_id}"
                           "-my-function-failure")["runs"]
        done = [r for r in runs if r["status"] == "completed"]
        return dict(http("GET", sample.base + done[0]["url"])) if done else None
    handler_run = wait_until(handled, 60, "the onFailure handler")
    assert [(s["name"], s["status"]) for s in handler_run["steps"]] == [
        ("handle-error", "completed")]
    assert handler_run["event"]["data"]["run_id"] == run["id"]
    assert "Error processing event: Error: cannot finish Processed upload-[fail] -> step 2" in \
        sample.app_state()["errors"]
