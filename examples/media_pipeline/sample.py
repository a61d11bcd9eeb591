"""Write a spoken sample recording: `python -m examples.media_pipeline.sample OUT.wav`."""

from __future__ import annotations

import sys

from .audio import speak

#: What the sample says (the tests check the transcript against it).
SENTENCE = "today we talk about hope and love in our daily life"

if __name__ == "__main__":
    print(speak(SENTENCE, sys.argv[1] if len(sys.argv) > 1 else "sample.wav"))
