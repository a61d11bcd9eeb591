"""Outside dev mode, SDK apps and stepwise trust each other through the signing key: a real
Python SDK app in cloud mode, `stepwise server --signing-key` and `stepwise worker --sdk`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.procs import (
    Answer,
    ScriptedApp,
    free_port,
    http,
    in_band,
    start,
    stop,
    wait_healthy,
    wait_until,
)

from stepwise import signing

ROOT = Path(__file__).resolve().parents[2]
if os.environ.get("CI") != "true":
    pytest.importorskip("inngest", reason="pip install -e '.[test]' brings inngest")

API_KEY, EVENT_KEY = "api-" + "a" * 40, "event-" + "e" * 40
SIGNING_KEY = "signkey-prod-" + "5e" * 32


def test_signing_key_helpers_match_the_sdks() -> None:
    from inngest._internal import net, transforms

    assert signing.bearer(SIGNING_KEY) == transforms.hash_signing_key(SIGNING_KEY)
    assert signing.accepts_bearer("signkey-prod-" + signing.bearer(SIGNING_KEY), SIGNING_KEY)
    assert not signing.accepts_bearer(signing.bearer("5f" * 32), SIGNING_KEY)
    body = signing.canonical({"b": 1.5, "a": ["é", None]})
    assert body == b'{"a":["\xc3\xa9",null],"b":1.5}'
    assert signing.sign(body, SIGNING_KEY, 1_700_000_000) == net.sign_request(
        body, SIGNING_KEY, 1_700_000_000)
    answer = b'"ok"'
    header = net.sign_response(answer, SIGNING_KEY, 1_700_000_000)
    assert signing.verify(answer, header, SIGNING_KEY, 1_700_000_100) is None
    assert "does not match" in str(signing.verify(b'"forged"', header, SIGNING_KEY,
                                                  1_700_000_100))
    assert "clock" in str(signing.verify(answer, header, SIGNING_KEY, 1_700_009_000))
    assert "not signed" in str(signing.verify(answer, None, SIGNING_KEY, 1_700_000_000))
    other = "signkey-prod-" + "6a" * 32  # a rotation: the answer is signed with the old key
    assert signing.verify(answer, header, other, 1_700_000_100, fallback=SIGNING_KEY) is None
    assert "or its fallback" in str(signing.verify(answer, header, other, 1_700_000_100,
                                                   fallback="7b" * 32))
    assert signing.accepts_bearer(signing.bearer(SIGNING_KEY), other, fallback=SIGNING_KEY)
    assert not signing.accepts_bearer(signing.bearer(SIGNING_KEY), other)
    with pytest.raises(signing.SigningKeyError):
        signing.check_key("signkey-prod-not-hex")


def _post(url: str, body: object, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_a_cloud_mode_sdk_app_syncs_and_runs_only_with_the_signing_key(tmp_path: Path) -> None:
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app_url = f"http://127.0.0.1:{app_port}/api/inngest"
    db = str(tmp_path / "s.db")
    server = start(["server", "--port", str(port), "--host", "127.0.0.1", "--db", db,
                    "--api-key", API_KEY, "--event-key", EVENT_KEY,
                    "--signing-key", SIGNING_KEY], tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
    env.update(INNGEST_BASE_URL=base, INNGEST_SIGNING_KEY=SIGNING_KEY,
               INNGEST_EVENT_KEY=EVENT_KEY, PYTHONPATH=str(ROOT))
    with open(tmp_path / "app.log", "w") as log:
        app = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.sdk.py_signed_app:app",
                                "--port", str(app_port)], cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wrong = start(["worker", "--sdk", "--db", db, "--signing-key", "5f" * 32], tmp_path)
    worker = None
    try:
        wait_healthy(base, server)
        register = {"appName": "intruder", "url": "http://127.0.0.1:1/api", "v": "0.1",
                    "sdk": "js", "framework": "express", "functions": []}
        assert _post(base + "/fn/register", register) == 401  # unsigned
        assert _post(base + "/fn/register", register,
                     {"Authorization": f"Bearer {signing.bearer('5f' * 32)}"}) == 401

        def app_synced() -> bool:  # a deploy script's PUT makes the app sync itself
            try:
                urllib.request.urlopen(urllib.request.Request(app_url, method="PUT"),
                                       timeout=5).close()
            except OSError:
                return False
            return any(f["id"] == "py-signed-charge" for f in http(
                "GET", base + "/api/v1/functions", headers=auth)["functions"])
        auth = {"Authorization": f"Bearer {API_KEY}"}
        wait_until(app_synced, 60, "the signed sync")
        assert _post(base + "/e/wrong-key", {"name": "payment.due", "data": {}}) == 401
        answer = http("POST", f"{base}/e/{EVENT_KEY}",
                      {"name": "payment.due", "data": {"order": "o-1"}})
        (event_id,) = answer["ids"]

        def refused() -> dict[str, object] | None:  # a worker with another key: refused
            runs = http("GET", f"{base}/api/v1/events/{event_id}", headers=auth)["runs"]
            run = http("GET", base + runs[0]["url"], headers=auth) if runs else None
            return run if run and run.get("failures") else None
        run = wait_until(refused, 60, "the wrongly signed call refused")
        failure = json.dumps(run["failures"])
        assert "AnswerNotSigned" in failure and "refused this server's signature" in failure
        stop(wrong)
        worker = start(["worker", "--sdk", "--db", db, "--signing-key", SIGNING_KEY],
                       tmp_path)

        def completed() -> dict[str, object] | None:
            got = http("GET", f"{base}/api/v1/runs/{run['id']}", headers=auth)
            return got if got["status"] == "completed" else None
        done = wait_until(completed, 90, "the signed run")
        assert done["output"] == "charged 42 for o-1"
    finally:
        for proc in (worker, wrong, server):
            if proc is not None:
                stop(proc)
        app.terminate()
        app.wait(10)


NEW_KEY = "signkey-prod-" + "6a" * 32


def _signed_app(tmp_path: Path, base: str, app_id: str, key: str, fallback: str | None
                ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
    env.update(INNGEST_BASE_URL=base, INNGEST_SIGNING_KEY=key, INNGEST_EVENT_KEY=EVENT_KEY,
               PYTHONPATH=str(ROOT), SIGNED_APP_ID=app_id)
    if fallback is not None:
        env["INNGEST_SIGNING_KEY_FALLBACK"] = fallback
    with open(tmp_path / f"{app_id}.log", "w") as log:
        app = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.sdk.py_signed_app:app",
                                "--port", str(port)], cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return app, f"http://127.0.0.1:{port}/api/inngest"


def test_signing_keys_rotate_with_apps_on_the_old_and_the_new_key_at_once(
        tmp_path: Path) -> None:
    """The documented procedure: the server accepts the new key beside the old one
    (`--signing-key OLD --signing-key-fallback NEW`) while apps move to `INNGEST_SIGNING_KEY=NEW`
    with `INNGEST_SIGNING_KEY_FALLBACK=OLD`; apps on either run. Then the server signs with the
    new key (`--signing-key NEW --signing-key-fallback OLD`): moved apps still run; one left
    on the old key alone is refused, as the procedure warns."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = str(tmp_path / "s.db")
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def serve(key: str, fallback: str) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
        keys = ["--signing-key", key, "--signing-key-fallback", fallback]
        server = start(["server", "--port", str(port), "--host", "127.0.0.1", "--db", db,
                        "--api-key", API_KEY, "--event-key", EVENT_KEY, *keys], tmp_path)
        wait_healthy(base, server)
        return server, start(["worker", "--sdk", "--db", db, *keys], tmp_path)

    def synced(url: str, function_id: str) -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=5).close()
        except OSError:
            return False
        return any(f["id"] == function_id for f in http(
            "GET", base + "/api/v1/functions", headers=auth)["functions"])

    def ended(event_id: str, function_id: str) -> dict[str, object] | None:
        runs = [r for r in http("GET", f"{base}/api/v1/events/{event_id}", headers=auth)["runs"]
                if r["function_id"] == function_id]
        if not runs:
            return None
        run = http("GET", base + runs[0]["url"], headers=auth)
        return run if run["status"] == "completed" or run.get("failures") else None

    old_app, old_url = _signed_app(tmp_path, base, "on-old", SIGNING_KEY, None)
    moved_app, moved_url = _signed_app(tmp_path, base, "moved", NEW_KEY, SIGNING_KEY)
    server, worker = serve(SIGNING_KEY, NEW_KEY)
    try:
        wait_until(lambda: synced(old_url, "on-old-charge"), 60, "the old key's sync")
        wait_until(lambda: synced(moved_url, "moved-charge"), 60, "the new key's sync")
        first = http("POST", f"{base}/e/{EVENT_KEY}",
                     {"name": "payment.due", "data": {"order": "o-1"}})["ids"][0]
        for function_id in ("on-old-charge", "moved-charge"):
            run = wait_until(lambda f=function_id: ended(first, f), 90, function_id)
            assert run["status"] == "completed" and run["output"] == "charged 42 for o-1", run

        stop(worker)
        stop(server)
        server, worker = serve(NEW_KEY, SIGNING_KEY)
        second = http("POST", f"{base}/e/{EVENT_KEY}",
                      {"name": "payment.due", "data": {"order": "o-2"}})["ids"][0]
        moved = wait_until(lambda: ended(second, "moved-charge"), 90, "the moved app's run")
        assert moved["status"] == "completed" and moved["output"] == "charged 42 for o-2"
        wait_until(lambda: synced(moved_url, "moved-charge"), 60, "a sync with the new key")
        left = wait_until(lambda: ended(second, "on-old-charge"), 90, "the old app refusing")
        failure = json.dumps(left["failures"])
        assert "AnswerNotSigned" in failure and "refused this server's signature" in failure
    finally:
        stop(worker)
        stop(server)
        for app in (old_app, moved_app):
            app.terminate()
            app.wait(10)


def _register(base: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(base + "/fn/register", json.dumps(body).encode(),
                                     method="POST", headers={
                                         "Content-Type": "application/json",
                                         "Authorization": f"Bearer {signing.bearer(SIGNING_KEY)}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_posted_sync_is_confirmed_in_band_so_a_forged_or_replayed_one_stores_nothing(
        tmp_path: Path) -> None:
    """Both SDKs sync with the key's hash alone (no signature, no time), so whoever saw that
    header once could post any sync, or replay an old one, forever. Outside dev mode the post
    only names the app: the server asks the app at its URL in-band (a signed PUT) and stores
    the app's signed answer. Before, the forged function below was stored as posted."""
    port, app_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    app_url = f"http://127.0.0.1:{app_port}/api/inngest"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    server = start(["server", "--port", str(port), "--host", "127.0.0.1", "--db",
                    str(tmp_path / "s.db"), "--api-key", API_KEY, "--event-key", EVENT_KEY,
                    "--signing-key", SIGNING_KEY], tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
    env.update(INNGEST_BASE_URL=base, INNGEST_SIGNING_KEY=SIGNING_KEY,
               INNGEST_EVENT_KEY=EVENT_KEY, PYTHONPATH=str(ROOT))
    with open(tmp_path / "app.log", "w") as log:
        app = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.sdk.py_signed_app:app",
                                "--port", str(app_port)], cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def sync_of(app_id: str, url: str, step_url: str) -> dict[str, Any]:
        return {"appName": app_id, "url": url, "v": "0.1", "sdk": "py:v0.5.19",
                "framework": "fast_api", "functions": [{
                    "id": f"{app_id}-exfil", "name": "exfil",
                    "triggers": [{"event": "payment.due"}],
                    "steps": {"step": {"id": "step", "name": "step",
                                       "runtime": {"type": "http", "url": step_url}}}}]}

    def stored(app_id: str) -> dict[str, str]:
        return {f["id"]: f["url"] for f in http("GET", base + "/api/v1/functions",
                                                headers=auth)["functions"]
                if f["app_id"] == app_id}

    captured = in_band(lambda url: sync_of("replayed", url, url), SIGNING_KEY)
    fixed: list[Answer] = []

    def replaying(call: dict[str, Any]) -> Answer:  # one signed answer, given every time
        fixed.extend([] if fixed else [captured(call)])
        return fixed[0]

    def stale(call: dict[str, Any]) -> Answer:  # signed ten minutes ago
        status, headers, reply = in_band(lambda url: sync_of("stale", url, url),
                                         SIGNING_KEY)(call)
        then = int(time.time()) - 600
        return status, {**headers, "X-Inngest-Signature": signing.sign(
            json.dumps(reply).encode(), SIGNING_KEY, then)}, reply

    fakes = {
        "unsigned": ScriptedApp(lambda call: (500, {}, {}), sync=lambda call: (
            200, {"X-Inngest-Sync-Kind": "in_band"},
            {"app_id": "unsigned", "url": call["body"]["url"], "functions": []})),
        "other-key": ScriptedApp(lambda call: (500, {}, {}), sync=in_band(
            lambda url: sync_of("other-key", url, url), "signkey-prod-" + "5f" * 32)),
        "out-of-band": ScriptedApp(lambda call: (500, {}, {}), sync=lambda call: (
            200, {"X-Inngest-Sync-Kind": "out_of_band"}, {"message": "synced"})),
        "replayed": ScriptedApp(lambda call: (500, {}, {}), sync=replaying),
        "stale": ScriptedApp(lambda call: (500, {}, {}), sync=stale),
    }
    try:
        wait_healthy(base, server)
        # A post naming the real app, with a function of the poster's: the app's own
        # functions are stored, each at the app's URL; the posted one is not.
        forged = sync_of("py-signed", app_url, "http://127.0.0.1:9/collect")

        def confirmed() -> dict[str, Any] | None:
            status, answer = _register(base, forged)
            return answer if status == 200 else None
        answer = wait_until(confirmed, 60, "the app's in-band answer")
        assert answer["app_id"] == "py-signed"
        assert list(stored("py-signed")) == ["py-signed-charge"]
        assert stored("py-signed")["py-signed-charge"].startswith(app_url)
        # Posts naming fakes whose answers are unsigned, signed with another key, stale, not
        # in-band: refused, nothing stored.
        for name, status, words in (("unsigned", 401, "not signed"),
                                    ("other-key", 401, "does not match"),
                                    ("stale", 401, "off this server's clock"),
                                    ("out-of-band", 400, "did not confirm the sync in-band")):
            url = fakes[name].url
            refused, answer = _register(base, sync_of(name, url, url))
            assert (refused, answer["status"]) == (status, status), (name, answer)
            assert words in answer["error"], (name, answer)
            assert stored(name) == {}
        # The same signed answer twice (a replay within the clock window): taken once.
        url = fakes["replayed"].url
        assert _register(base, sync_of("replayed", url, url))[0] == 200
        again, answer = _register(base, sync_of("replayed", url, url))
        assert again == 401 and "taken before" in answer["error"], answer
    finally:
        stop(server)
        for fake in fakes.values():
            fake.close()
        app.terminate()
        app.wait(10)


def test_allow_unconfirmed_sync_stores_a_posted_sync_as_posted(tmp_path: Path) -> None:
    """For apps that cannot answer in-band (older SDKs, INNGEST_ALLOW_IN_BAND_SYNC=false),
    `--allow-unconfirmed-sync` stores the post as it is, still only with the signing key."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    silent = f"http://127.0.0.1:{free_port()}/api/inngest"  # nothing answers there
    server = start(["server", "--port", str(port), "--host", "127.0.0.1", "--db",
                    str(tmp_path / "s.db"), "--api-key", API_KEY, "--event-key", EVENT_KEY,
                    "--signing-key", SIGNING_KEY, "--allow-unconfirmed-sync"], tmp_path)
    sync = {"appName": "legacy", "url": silent, "v": "0.1", "sdk": "js:v3.0.0",
            "framework": "express", "functions": [{
                "id": "legacy-charge", "name": "charge", "triggers": [{"event": "pay"}],
                "steps": {"step": {"id": "step", "name": "step",
                                   "runtime": {"type": "http", "url": silent}}}}]}
    try:
        wait_healthy(base, server)
        status, answer = _register(base, sync)
        assert status == 200 and answer["app_id"] == "legacy", answer
        functions = http("GET", base + "/api/v1/functions",
                         headers={"Authorization": f"Bearer {API_KEY}"})["functions"]
        assert [f["id"] for f in functions if f["app_id"] == "legacy"] == ["legacy-charge"]
        # Still only with the signing key.
        anonymous = urllib.request.Request(base + "/fn/register", method="POST",
                                           data=json.dumps(sync).encode(),
                                           headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=10)
        assert refused.value.code == 401
        refused.value.close()
    finally:
        stop(server)
