"""Embedders for transcript chunks. The default runs offline with no model to download
(feature hashing of words and word pairs, L2-normalised); set MEDIA_EMBEDDER to
`module:factory` to plug in a real model (a factory returning an object with
`embed(texts) -> list[list[float]]` and a `name`)."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import math
import os
from typing import Protocol


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class HashingEmbedder:
    """Words and word pairs hashed into `dims` buckets: similar wording, similar vectors."""

    def __init__(self, dims: int = 256) -> None:
        self.dims = dims
        self.name = f"hashing-{dims}"

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * self.dims
            words = text.lower().split()
            for feature in [*words, *(" ".join(p) for p in itertools.pairwise(words))]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "big") % self.dims
                vector[bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([round(v / norm, 6) for v in vector])
        return out


def configured() -> Embedder:
    spec = os.environ.get("MEDIA_EMBEDDER")
    if not spec:
        return HashingEmbedder()
    module, _, factory = spec.partition(":")
    embedder: Embedder = getattr(importlib.import_module(module), factory)()
    return embedder


def chunks(segments: list[dict[str, object]], max_words: int = 40) -> list[str]:
    """Transcript segments joined into chunks of at most `max_words` words."""
    out: list[str] = []
    current: list[str] = []
    for segment in segments:
        for word in str(segment["text"]).split():
            current.append(word)
            if len(current) == max_words:
                out.append(" ".join(current))
                current = []
    if current:
        out.append(" ".join(current))
    return out
