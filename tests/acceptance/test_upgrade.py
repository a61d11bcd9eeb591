"""A database written by an earlier release opens with this code, and the runs it left
sleeping, waiting or queued finish: an Inngest SDK app's and a Python-native app's.

The earlier release is this repository's own code at `EARLIER_RELEASE` (taken with `git
archive`), run as a real `stepwise dev` until its runs are parked; then this code's `stepwise
dev` opens the same database (its migrations apply) and the runs are woken and finish. SDK
steps stored by the earlier release keep the SDK's `{"data": ...}` memo as it stored them,
and the SDK must read them back unchanged."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import free_port, http, start, stop, wait_healthy, wait_until

ROOT = Path(__file__).resolve().parents[2]
#: main before migration 0016 (steps.kind: values stored plain, the SDK memo built by kind).
EARLIER_RELEASE = "8c8ab47"
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")


def earlier_source(tmp: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", EARLIER_RELEASE, "src"],
                             capture_output=True, check=False)
    if archive.returncode != 0:  # not a clone with history (an sdist, a shallow clone)
        message = f"git archive {EARLIER_RELEASE}: {archive.stderr.decode()[:200]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp / "earlier", filter="data")
    return tmp / "earlier" / "src"


@pytest.fixture
def sdk_app(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/inngest"
    holder: dict[str, Any] = {}

    def serve(dev_base: str) -> None:
        if "proc" in holder:
            holder["proc"].terminate()
            holder["proc"].wait(10)
        with open(tmp_path / "app.log", "a") as log:
            holder["proc"] = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tests.acceptance.upgrade_app:sdk",
                 "--port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "INNGEST_DEV": dev_base,
                                             "PYTHONPATH": str(ROOT)})
    try:
        yield url, serve
    finally:
        if "proc" in holder:
            holder["proc"].terminate()
            holder["proc"].wait(10)


def dev(db: str, tmp: Path, app_url: str, source: Path | None = None
        ) -> tuple[str, subprocess.Popen[str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = f"{source}:{ROOT}" if source is not None else str(ROOT)
    proc = start(["dev", "tests.acceptance.upgrade_app:native", "-u", app_url,
                  "--port", str(port), "--db", db], tmp, {"PYTHONPATH": path})
    wait_healthy(base, proc)
    return base, proc


def run_of(base: str, event_id: str, status: str, failed: bool = False) -> dict[str, Any]:
    """The run of `event_id` once it has `status` (and, with `failed`, a failed attempt)."""
    def found() -> dict[str, Any] | None:
        runs = http("GET", f"{base}/api/v1/events/{event_id}")["runs"]
        if not runs or runs[0]["status"] != status:
            return None
        run = dict(http("GET", base + runs[0]["url"]))
        return run if run["failures"] or not failed else None
    return wait_until(found, 60, f"the run of {event_id} {status}")


def test_runs_left_by_an_earlier_release_finish_after_the_upgrade(
        db: str, tmp_path: Path, sdk_app: tuple[str, Any]) -> None:
    app_url, serve = sdk_app
    base, earlier = dev(db, tmp_path, app_url, earlier_source(tmp_path))
    try:
        serve(base)
        wait_until(lambda: len(http("GET", base + "/api/v1/functions")["functions"]) == 4, 60,
                   "the apps' sync")
        sleeping = http("POST", base + "/e/NO_EVENT_KEY_SET",
                        [{"name": "upgrade.sleep", "data": {"n": 41}}])["ids"][0]
        waiting = http("POST", base + "/e/NO_EVENT_KEY_SET",
                       [{"name": "upgrade.wait", "data": {}}])["ids"][0]
        queued = http("POST", base + "/e/NO_EVENT_KEY_SET",
                      [{"name": "upgrade.retry", "data": {}}])["ids"][0]
        native = http("POST", base + "/api/v1/events",
                      {"name": "upgrade.native", "data": {"n": 1}})["ids"][0]
        run_of(base, sleeping, "sleeping")
        run_of(base, waiting, "waiting")
        run_of(base, queued, "queued", failed=True)  # its retry is in an hour
        run_of(base, native, "sleeping")
    finally:
        stop(earlier)

    base, current = dev(db, tmp_path, app_url)  # this code: migrations apply on open
    try:
        serve(base)
        wait_until(lambda: http("GET", app_url)["function_count"] == 3, 30, "the SDK app")
        for event_id, status, failed in ((sleeping, "sleeping", False),
                                         (queued, "queued", True),
                                         (native, "sleeping", False)):
            run = run_of(base, event_id, status, failed)
            http("POST", f"{base}/api/v1/runs/{run['id']}/wake")
        run_of(base, waiting, "waiting")
        http("POST", base + "/e/NO_EVENT_KEY_SET", [{"name": "upgrade.go",
                                                     "data": {"word": "now"}}])

        done = run_of(base, sleeping, "completed")
        # `load` was stored by the earlier release (the SDK's memo as it was); `after`, by
        # this code, is the plain value; the SDK read both back right.
        assert done["output"] == {"loaded": {"n": 41}, "after": 42}
        assert [s["output"] for s in done["steps"] if s["name"] == "after"] == [42]
        assert run_of(base, waiting, "completed")["output"] == {
            "first": "before the upgrade", "go": "now"}
        assert run_of(base, queued, "completed")["output"] == "done on attempt 1"
        assert run_of(base, native, "completed")["output"] == {"after": 2}
    finally:
        stop(current)
