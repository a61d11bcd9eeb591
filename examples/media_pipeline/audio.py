"""Audio work for the media pipeline: ffprobe, ffmpeg and pocketsphinx, on files by path.

Media travels by reference: steps take and return paths (and small JSON about them), never the
audio itself, because a step result is stored in the database at every run and replayed as is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

#: The formats every upload is transcoded to, each in a parallel step. `wav16k` is what the
#: recognizer reads (16 kHz mono PCM).
FORMATS = {
    "mp3": ["-codec:a", "libmp3lame", "-b:a", "64k"],
    "opus": ["-codec:a", "libopus", "-b:a", "32k"],
    "wav16k": ["-ar", "16000", "-ac", "1", "-codec:a", "pcm_s16le"],
}
EXTENSIONS = {"mp3": "mp3", "opus": "ogg", "wav16k": "wav"}


class MediaError(Exception):
    """The media cannot be processed (missing, not audio): retrying will not help."""


def probe(path: str) -> dict[str, Any]:
    """Duration, container and audio stream of a file (ffprobe)."""
    if not Path(path).is_file():
        raise MediaError(f"no such media file: {path}")
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "format=duration,format_name:stream=codec_name,sample_rate,channels", "-of", "json",
         path], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise MediaError(f"{path} is not readable media: {result.stderr.strip()[:300]}")
    info = json.loads(result.stdout)
    stream = (info.get("streams") or [{}])[0]
    return {"path": path, "duration_s": round(float(info["format"]["duration"]), 3),
            "container": info["format"]["format_name"], "codec": stream.get("codec_name"),
            "sample_rate": int(stream.get("sample_rate", 0)),
            "channels": int(stream.get("channels", 0))}


def transcode(path: str, out_dir: str, fmt: str) -> dict[str, Any]:
    """Write `path` as `fmt` into `out_dir`; returns the new file's path and size."""
    out = Path(out_dir) / f"{Path(path).stem}.{EXTENSIONS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    result = subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", path, *FORMATS[fmt],
                             "-f", {"mp3": "mp3", "opus": "ogg", "wav16k": "wav"}[fmt],
                             str(partial)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed for {fmt}: {result.stderr.strip()[:300]}")
    partial.replace(out)  # a retried step never sees half a file
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size}


def transcribe(wav16k: str) -> dict[str, Any]:
    """Recognize English speech offline (pocketsphinx 5 and the model inside its wheel).
    Returns the text and segments: words with their times, split at pauses."""
    from pocketsphinx import Decoder

    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", wav16k, "-ar", "16000",
                          "-ac", "1", "-f", "s16le", "-"], capture_output=True,
                         timeout=600, check=True).stdout
    decoder = Decoder(samprate=16000)
    decoder.start_utt()
    decoder.process_raw(raw, full_utt=True)
    decoder.end_utt()
    segments: list[dict[str, Any]] = []
    words: list[str] = []
    start = end = 0.0
    for seg in decoder.seg():
        word = seg.word
        if word.startswith(("<", "[")):  # <s>, </s>, <sil>, [NOISE]: a pause
            if words and seg.end_frame - seg.start_frame >= 20:  # 0.2 s or more
                segments.append({"start_s": start, "end_s": end, "text": " ".join(words)})
                words = []
            continue
        if not words:
            start = seg.start_frame / 100
        end = seg.end_frame / 100
        words.append(word.split("(")[0])  # "the(2)": an alternative pronunciation
    if words:
        segments.append({"start_s": start, "end_s": end, "text": " ".join(words)})
    return {"text": " ".join(s["text"] for s in segments), "segments": segments}


def speak(text: str, out: str) -> str:
    """Generate a sample recording of `text` (espeak-ng), so no audio is downloaded."""
    subprocess.run(["espeak-ng", "-v", "en-us+f5", "-s", "130", "-w", out, text], check=True,
                   capture_output=True, timeout=60)
    return out
