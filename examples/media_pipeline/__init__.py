"""The media pipeline: an uploaded recording is probed, transcoded to several formats in
parallel, transcribed offline, stored as transcript segments, embedded in chunks for search,
and its owner is notified. Each of those is a step: a worker killed mid-transcode resumes at
the transcode, and the transcription (the slow part) never runs twice once stored. The
transcodes are plain steps, so they run in threads at once; the transcription runs in a
child process (`executor="process"`), on a core of its own.

    stepwise dev examples.media_pipeline:app
    python -m examples.media_pipeline.sample /tmp/talk.wav      # a spoken sample (espeak-ng)
    stepwise send media.uploaded '{"media_id": "talk-1", "user_id": "u1", "path": "/tmp/talk.wav"}'

Needs ffmpeg and espeak-ng (Debian packages) and `pip install 'stepwise-engine[examples]'`
(pocketsphinx). MEDIA_DB: where transcripts go (SQLite path, default media.db, or a
postgresql:// URL); MEDIA_FLAKY_RATE: how often the transcriber fails transiently (default 0.2,
to show retries); MEDIA_EMBEDDER: `module:factory` of another embedder.

Media is passed by reference: steps take and return paths, never audio bytes. A step result is
stored in the database and read back at every later execution of the run, so it should be
small data; the files live on disk (or in an object store) and the steps hand their paths on.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import stepwise

from . import audio, embeddings, store

app = stepwise.App("media")


class TranscriberUnavailable(ConnectionError):
    """The recognizer service did not answer (simulated): retried with backoff."""


def transcribe_now_and_then(wav16k: str, media_id: str, attempt: int) -> dict[str, Any]:
    """The transcriber, failing transiently at MEDIA_FLAKY_RATE (decided per media id and
    attempt, so a run's story can be told again)."""
    rate = float(os.environ.get("MEDIA_FLAKY_RATE", "0.2"))
    if random.Random(f"{media_id}:{attempt}").random() < rate:
        raise TranscriberUnavailable(f"transcriber timed out (attempt {attempt + 1})")
    return audio.transcribe(wav16k)


def embed_and_store(media_id: str, segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Embed the transcript in chunks and store the vectors (they stay out of the run)."""
    embedder = embeddings.configured()
    texts = embeddings.chunks(segments)
    vectors = embedder.embed(texts) if texts else []
    store.save_chunks(media_id, texts, embedder.name, vectors)
    return {"chunks": len(texts), "embedder": embedder.name,
            "dims": len(vectors[0]) if vectors else 0}


async def record_failure(ctx: stepwise.Context) -> None:
    error = ctx.error or {}
    await ctx.step.run("record-failure", store.record_failure, ctx.event.data["media_id"],
                       f"{error.get('name')}: {error.get('message')}")


@app.function(id="transcribe-audio", trigger=stepwise.on_event("media.uploaded"), retries=4,
              concurrency=stepwise.Concurrency(limit=2, key="event.data.user_id"),
              on_failure=record_failure)
async def transcribe_audio(ctx: stepwise.Context) -> dict[str, Any]:
    media_id = ctx.event.data["media_id"]
    path = ctx.event.data["path"]
    out_dir = os.environ.get("MEDIA_WORKDIR") or str(Path(path).parent / f"{media_id}.out")
    meta = await ctx.step.run("fetch-audio-metadata", probe_or_stop, path)
    files = await ctx.step.parallel(*(  # plain steps in threads: the three run at once
        (lambda fmt=fmt: ctx.step.run(f"transcode-{fmt}", audio.transcode, path, out_dir, fmt))
        for fmt in audio.FORMATS))
    wav16k = next(f["path"] for f in files if f["format"] == "wav16k")
    # Seconds of CPU-bound Python: in a child process, so it uses a core of its own and
    # holds no other run of the worker (a plain step runs in a thread otherwise).
    transcript = await ctx.step.run(stepwise.StepOptions("transcribe", executor="process"),
                                    transcribe_now_and_then, wav16k, media_id, ctx.attempt)
    ctx.logger.info("transcribed %s: %d segments", media_id, len(transcript["segments"]))
    saved = await ctx.step.run("save-transcript", store.save_segments, media_id,
                               transcript["segments"])
    embedded = await ctx.step.run("embed", embed_and_store, media_id, transcript["segments"])
    await ctx.step.run("notify-user", store.notify, media_id, ctx.event.data["user_id"],
                       f"Your recording {media_id} is transcribed ({saved} segments).")
    return {"media_id": media_id, "duration_s": meta["duration_s"],
            "files": {f["format"]: f["path"] for f in files}, "segments": saved,
            "text": transcript["text"], **embedded}


def probe_or_stop(path: str) -> dict[str, Any]:
    """A missing or unreadable file fails the run at once: retrying cannot fix it."""
    try:
        return audio.probe(path)
    except audio.MediaError as exc:
        raise stepwise.NonRetriableError(str(exc)) from None
