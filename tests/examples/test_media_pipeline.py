"""The media pipeline example end to end, on real audio: a sentence spoken by espeak-ng,
transcoded by ffmpeg, transcribed offline by pocketsphinx. Through the pytest plugin, through
the CLI (`stepwise dev` and `stepwise send`), and on PostgreSQL with two workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples.media_pipeline import store
from examples.media_pipeline.sample import SENTENCE
from tests.acceptance.procs import (
    STEPWISE,
    free_port,
    http,
    start,
    stop,
    wait_healthy,
    wait_until,
)

import stepwise
from examples import media_pipeline
from stepwise.testing import SyncHarness

ROOT = Path(__file__).resolve().parents[2]


def _require_tools() -> None:
    missing = [t for t in ("ffmpeg", "ffprobe", "espeak-ng") if shutil.which(t) is None]
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        missing.append("pocketsphinx (pip install 'stepwise-engine[examples]')")
    if missing:
        message = f"the media pipeline needs {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def recall(text: str) -> float:
    """The share of the spoken sentence's words found in a transcript."""
    heard = set(text.split())
    words = SENTENCE.split()
    return sum(w in heard for w in words) / len(words)


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _require_tools()
    monkeypatch.setenv("MEDIA_DB", str(tmp_path / "media.db"))
    return Path(media_pipeline.audio.speak(SENTENCE, str(tmp_path / "talk.wav")))


@pytest.fixture
def stepwise_app() -> Iterator[stepwise.App]:
    yield media_pipeline.app


def test_a_recording_is_transcoded_transcribed_stored_embedded_and_announced(
        stepwise_harness: SyncHarness, sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_FLAKY_RATE", "0.5")  # talk-1's first transcription fails
    h = stepwise_harness
    began = time.monotonic()
    event_id = h.send("media.uploaded", {"media_id": "talk-1", "user_id": "u1",
                                         "path": str(sample)})
    h.settle(advance=True)  # through the retry's backoff
    elapsed = time.monotonic() - began
    run = h.run_for(event_id, "transcribe-audio")
    assert run["status"] == "completed", run["error"]
    out = run["output"]
    print(f"one media run: {elapsed:.2f} s; transcript {out['text']!r}; "
          f"recall {recall(out['text']):.0%}")
    assert recall(out["text"]) >= 0.6
    assert 3 < out["duration_s"] < 10
    for fmt, path in out["files"].items():  # each format really written, by reference
        assert Path(path).stat().st_size > 1000, fmt
    probe = media_pipeline.audio.probe(out["files"]["opus"])
    assert probe["codec"] == "opus"
    steps = {s["id"]: s for s in run["steps"]}
    assert list(steps) == ["fetch-audio-metadata", "transcode-mp3", "transcode-opus",
                           "transcode-wav16k", "transcribe", "save-transcript", "embed",
                           "notify-user"]
    assert steps["transcribe"]["attempts"] == 2  # failed once, transiently, then succeeded
    assert "TranscriberUnavailable" in json.dumps(run["failures"])
    segments = store.rows("media_segments", "talk-1")
    assert " ".join(row[4] for row in segments) == out["text"]
    chunks = store.rows("media_chunks", "talk-1")
    assert len(chunks) == out["chunks"] == 1 and len(json.loads(chunks[0][4])) == 256
    assert store.rows("media_notifications", "talk-1")[0][1] == "u1"
    assert "transcribed talk-1" in " ".join(line["message"] for line in run["logs"])


def test_a_missing_file_fails_at_once_and_the_failure_is_recorded(
        stepwise_harness: SyncHarness, sample: Path) -> None:
    h = stepwise_harness
    event_id = h.send("media.uploaded", {"media_id": "gone", "user_id": "u1",
                                         "path": str(sample.parent / "nope.wav")})
    h.settle(advance=True)
    run = h.run_for(event_id, "transcribe-audio")
    assert run["status"] == "failed" and run["failed_attempts"] == 1  # no retries
    (failure,) = store.rows("media_failures", "gone")
    assert "no such media file" in failure[1]


def test_through_the_cli_with_stepwise_dev_and_send(sample: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"MEDIA_DB": str(tmp_path / "media.db"), "MEDIA_FLAKY_RATE": "0",
           "PYTHONPATH": str(ROOT)}
    proc = start(["dev", "examples.media_pipeline:app", "--port", str(port), "--db",
                  str(tmp_path / "dev.db")], tmp_path, env)
    try:
        wait_healthy(base, proc)
        sent = subprocess.run([*STEPWISE, "send", "media.uploaded", json.dumps(
            {"media_id": "cli-1", "user_id": "u9", "path": str(sample)}), "--url", base],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr

        def done() -> dict[str, Any] | None:
            runs = http("GET", base + "/api/v1/runs?function=transcribe-audio")["runs"]
            return runs[0] if runs and runs[0]["status"] == "completed" else None
        run = wait_until(done, 120, "the media run")
        detail = http("GET", base + run["url"])
        assert recall(detail["output"]["text"]) >= 0.6
        # On the real clock: the three transcodes (plain steps, in threads) ran at once.
        steps = {s["id"]: s for s in detail["steps"]}
        transcodes = [steps[f"transcode-{fmt}"] for fmt in ("mp3", "opus", "wav16k")]
        assert max(s["started_at"] for s in transcodes) < \
            min(s["ended_at"] for s in transcodes), f"the transcodes ran one by one: {transcodes}"
    finally:
        stop(proc)


def test_on_postgresql_with_two_workers(sample: Path, tmp_path: Path, pg_schema: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_DB", pg_schema)  # where this test reads the transcripts too
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"MEDIA_DB": pg_schema, "MEDIA_FLAKY_RATE": "0", "PYTHONPATH": str(ROOT)}
    server = start(["server", "--db", pg_schema, "--port", str(port), "--host", "127.0.0.1",
                    "--insecure"], tmp_path, env)
    workers = [start(["worker", "examples.media_pipeline:app", "--db", pg_schema,
                      "--concurrency", "2"], tmp_path, env) for _ in range(2)]
    try:
        wait_healthy(base, server)
        # Events route to the functions registered when they arrive: the workers register
        # theirs as they start, which a loaded machine can make later than the server's.
        wait_until(lambda: any(f["id"] == "transcribe-audio" for f in http(
            "GET", base + "/api/v1/functions")["functions"]), 60, "the workers' functions")
        uploads = [{"media_id": f"pg-{n}", "user_id": f"user-{n % 2}", "path": str(sample)}
                   for n in range(4)]
        http("POST", base + "/api/v1/events",
             [{"name": "media.uploaded", "data": u} for u in uploads])

        def all_done() -> list[dict[str, Any]] | None:
            runs = http("GET", base + "/api/v1/runs?function=transcribe-audio")["runs"]
            finished = [r for r in runs if r["status"] == "completed"]
            return finished if len(finished) == 4 else None
        wait_until(all_done, 180, "four media runs on two workers")
        for upload in uploads:
            segments = store.rows("media_segments", upload["media_id"])  # in PostgreSQL
            assert recall(" ".join(row[4] for row in segments)) >= 0.6
        owners = http("GET", base + "/api/v1/workers")["workers"]
        assert len([w for w in owners if w["live"]]) == 2
    finally:
        for proc in [*workers, server]:
            stop(proc)
