"""Checkpointing with Inngest's TypeScript SDK 4.x (`ts/checkpoint.ts`, a real Node process):
stepwise offers it on each discovery call (`ctx.fn_id`, `ctx.qi_id`), the SDK runs step after
step within one call and stores each through `POST /v1/checkpoint/{run}/async`, and a worker
killed with SIGKILL in the middle of such a call loses no stored step and runs none again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, kill9, start, stop, wait_healthy, wait_until
from tests.sdk.test_ts_sdk import node_apps_ready, start_node_app

API_KEY, EVENT_KEY = "api-" + "c" * 40, "event-" + "d" * 40
SIGNING_KEY = "signkey-prod-" + "3e" * 32
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class App:
    """The app's own counts: executions per `<run>/<step>`, calls per run and how many of
    them offered checkpointing."""

    def __init__(self, url: str) -> None:
        self.url = url

    def state(self) -> dict[str, Any]:
        return dict(http("GET", self.url.replace("/api/inngest", "/test/state")))

    def executions(self, run_id: str) -> dict[str, int]:
        return {key.split("/", 1)[1]: n for key, n in self.state()["executions"].items()
                if key.startswith(run_id + "/")}

    def calls(self, run_id: str) -> tuple[int, int]:
        state = self.state()
        return state["calls"].get(run_id, 0), state["offered"].get(run_id, 0)


def run_of(base: str, event_id: str, headers: dict[str, str] | None = None,
           status: str | None = None, timeout: float = 60) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        runs = http("GET", f"{base}/api/v1/events/{event_id}", headers=headers)["runs"]
        if not runs:
            return None
        run = dict(http("GET", base + runs[0]["url"], headers=headers))
        return run if status is None or run["status"] == status else None
    return dict(wait_until(found, timeout, f"the run of {event_id} {status or ''}"))


def stored(run: dict[str, Any]) -> dict[str, Any]:
    return {s["name"]: s["output"] for s in run["steps"] if s["status"] == "completed"}


@pytest.fixture
def dev(db: str, tmp_path: Path) -> Iterator[tuple[str, App]]:
    """`stepwise dev` (no keys: the SDK checkpoints with an empty bearer) and the app."""
    node_apps_ready()
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app = start_node_app("checkpoint.ts", app_port, {"INNGEST_DEV": base}, tmp_path / "app.log")
    url = f"http://127.0.0.1:{app_port}/api/inngest"
    server = start(["dev", "-u", url, "--port", str(port), "--db", db], tmp_path)
    try:
        wait_healthy(base, server)
        wait_until(lambda: len(http("GET", base + "/api/v1/functions")["functions"]) == 4,
                   90, "the app's sync")
        yield base, App(url)
    finally:
        stop(server)
        stop(app)


def test_a_call_runs_several_steps_each_stored_as_it_completes(dev: tuple[str, App]) -> None:
    base, app = dev

    def send(name: str) -> str:
        return str(http("POST", base + "/e/key", {"name": name, "data": {}})["ids"][0])
    steps, classic = send("ckpt.steps"), send("ckpt.classic")
    run = run_of(base, steps, status="completed")
    assert run["output"] == ["v1", "v2", "v3", "v4", "v5"]
    # One call ran the five steps; each was stored on its own, as the code named it.
    assert app.calls(run["id"]) == (1, 1)
    assert [(s["name"], s["status"], s["output"], s["attempts"]) for s in run["steps"]] == [
        (f"s{i}", "completed", f"v{i}", 1) for i in range(1, 6)]
    assert run["steps"][0]["id"] == hashlib.sha1(b"s1").hexdigest()
    assert app.executions(run["id"]) == {f"s{i}": 1 for i in range(1, 6)}
    # The same function with `checkpointing: false` in the app: one call per step, and one
    # for the end, though every call offered it.
    other = run_of(base, classic, status="completed")
    assert other["output"] == run["output"]
    assert app.calls(other["id"]) == (6, 6)


def test_what_cannot_run_inline_is_answered_and_the_run_goes_on(dev: tuple[str, App]) -> None:
    """A sleep between checkpointed steps parks the run; a step that fails is answered and
    retried; the retried call (attempt 1) answers its step, and the next call checkpoints."""
    base, app = dev
    event_id = http("POST", base + "/e/key", {"name": "ckpt.mixed", "data": {}})["ids"][0]
    sleeping = run_of(base, event_id, status="sleeping")
    assert stored(sleeping) == {"before": "a"}
    http("POST", f"{base}/api/v1/runs/{sleeping['id']}/wake")  # its hour, now
    run = run_of(base, event_id, status="completed")
    assert run["output"] == ["a", "b", "c"]
    assert [(s["name"], s["attempts"]) for s in run["steps"]] == [
        ("before", 1), ("nap", 1), ("flaky", 2), ("after", 1)]
    assert [f["error"]["message"] for f in run["failures"]] == ["first attempt fails"]
    assert app.executions(run["id"]) == {"before": 1, "flaky": 2, "after": 1}
    assert app.calls(run["id"]) == (4, 4)  # 'after' came with the run's end


class Cloud:
    """`stepwise server` with keys, and the app in cloud mode (its checkpoints carry the
    signing key's hash), over `db`; workers are started by the test."""

    def __init__(self, db: str, tmp: Path) -> None:
        self.db, self.tmp = db, tmp
        port, app_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.server = start(["-v", "server", "--db", db, "--port", str(port), "--host",
                             "127.0.0.1", "--api-key", API_KEY, "--event-key", EVENT_KEY,
                             "--signing-key", SIGNING_KEY], tmp)
        self.app_proc = start_node_app("checkpoint.ts", app_port, {
            "INNGEST_BASE_URL": self.base, "INNGEST_SIGNING_KEY": SIGNING_KEY,
            "INNGEST_EVENT_KEY": EVENT_KEY}, tmp / "app.log")
        self.app = App(f"http://127.0.0.1:{app_port}/api/inngest")
        self.workers: list[Any] = []

    def sync(self) -> None:
        wait_healthy(self.base, self.server)

        def synced() -> bool:  # the deploy's PUT: the app syncs itself with its key
            http("PUT", self.app.url)
            return len(http("GET", self.base + "/api/v1/functions",
                            headers=AUTH)["functions"]) == 4
        wait_until(synced, 90, "the signed sync")

    def worker(self) -> Any:
        proc = start(["worker", "--sdk", "--db", self.db, "--signing-key", SIGNING_KEY,
                      "--lease-seconds", "1"], self.tmp)
        self.workers.append(proc)
        return proc

    def send_gated(self) -> tuple[str, Path]:
        gate = self.tmp / "gate"
        answer = http("POST", f"{self.base}/e/{EVENT_KEY}",
                      {"name": "ckpt.gated", "data": {"gate": str(gate)}})
        return str(answer["ids"][0]), gate

    def mid_batch(self, event_id: str) -> dict[str, Any]:
        """The run once its call has stored s1 and s2 and is inside s3."""
        def inside() -> dict[str, Any] | None:
            run = run_of(self.base, event_id, AUTH)
            if stored(run) != {"s1": 1, "s2": 2}:
                return None
            return run if self.app.executions(run["id"]).get("s3") == 1 else None
        return dict(wait_until(inside, 60, "s3 under way"))

    def completed(self, run_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run = http("GET", f"{self.base}/api/v1/runs/{run_id}", headers=AUTH)
            return run if run["status"] == "completed" else None
        return dict(wait_until(done, 60, "the run's end"))

    def server_log(self) -> str:
        return "\n".join(p.read_text() for p in self.tmp.glob("proc-*.log"))

    def stop(self) -> None:
        for proc in (*self.workers, self.server, self.app_proc):
            stop(proc)


@pytest.fixture
def cloud(db: str, tmp_path: Path) -> Iterator[Cloud]:
    node_apps_ready()
    stack = Cloud(db, tmp_path)
    try:
        stack.sync()
        yield stack
    finally:
        stack.stop()


def test_kill_9_mid_batch_then_another_worker_takes_over(cloud: Cloud) -> None:
    """The worker is killed while its call is inside s3 (s1 and s2 stored). Another worker
    takes the run over and its call runs s3 again (not stored), s1 and s2 not. Then the gate
    opens: the dead worker's call finishes s3 too, and its checkpoint is refused (409: its
    lease is stale), so it stops there; s4 and s5 run once, in the new call."""
    cloud.worker()
    event_id, gate = cloud.send_gated()
    run = cloud.mid_batch(event_id)
    kill9(cloud.workers[0])
    cloud.worker()
    wait_until(lambda: cloud.app.executions(run["id"]).get("s3") == 2, 60,
               "the new call inside s3")
    gate.touch()
    final = cloud.completed(run["id"])
    assert final["output"] == [1, 2, 3, 4, 5]
    assert [(s["name"], s["status"], s["attempts"]) for s in final["steps"]] == [
        (f"s{i}", "completed", 1) for i in range(1, 6)]
    wait_until(lambda: cloud.app.executions(run["id"]).get("s3-done") == 2, 30,
               "the dead worker's call to finish s3")
    assert cloud.app.executions(run["id"]) == {"s1": 1, "s2": 1, "s3": 2, "s3-done": 2,
                                                "s4": 1, "s5": 1}
    assert cloud.app.calls(run["id"]) == (2, 2)
    wait_until(lambda: f"checkpoint of run {run['id']} refused" in cloud.server_log(), 30,
               "the stale checkpoint refused")


def test_kill_9_mid_batch_and_the_orphaned_call_finishes_its_steps(cloud: Cloud) -> None:
    """The worker is killed while its call is inside s3, and the gate opens with no worker
    running: the call goes on and stores s3, s4 and s5 under the dead worker's lease, which
    nobody took over. A worker started after finds them stored: nothing runs again, and its
    one call only ends the run."""
    cloud.worker()
    event_id, gate = cloud.send_gated()
    run = cloud.mid_batch(event_id)
    kill9(cloud.workers[0])
    gate.touch()
    orphaned = wait_until(lambda: (lambda r: r if len(stored(r)) == 5 else None)(
        run_of(cloud.base, event_id, AUTH)), 60, "the orphaned call's steps stored")
    assert orphaned["status"] == "running"  # its end was answered to the dead worker
    cloud.worker()
    final = cloud.completed(run["id"])
    assert final["output"] == [1, 2, 3, 4, 5]
    assert json.dumps(stored(final)) == json.dumps({f"s{i}": i for i in range(1, 6)})
    assert cloud.app.executions(run["id"]) == {"s1": 1, "s2": 1, "s3": 1, "s3-done": 1,
                                                "s4": 1, "s5": 1}
    assert cloud.app.calls(run["id"]) == (2, 2)
