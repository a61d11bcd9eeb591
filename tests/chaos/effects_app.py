"""The app the chaos tests run in their worker processes (copied next to them as a module):
each of a run's three steps appends what ran to a file of its process, so a test can tell
whether a step body ran again after its result was stored. CHAOS_DIR: where the files go;
CHAOS_STEP_PAUSE_S: how long a step takes after its effect (default 0.002)."""

import json
import os
import time
from pathlib import Path

import stepwise

app = stepwise.App("chaos")
EFFECTS = Path(os.environ["CHAOS_DIR"]) / f"effects-{os.getpid()}.jsonl"
PAUSE_S = float(os.environ.get("CHAOS_STEP_PAUSE_S", "0.002"))


def effect(run_id: str, step: str) -> str:
    with EFFECTS.open("a") as f:
        f.write(json.dumps({"run": run_id, "step": step, "t": time.time()}) + "\n")
    time.sleep(PAUSE_S)
    return step


@app.function(id="job", trigger=stepwise.on_event("job"), retries=20)
def job(ctx: stepwise.Context) -> list[str]:
    return [ctx.step.run(f"s{i}", effect, ctx.run_id, f"s{i}") for i in range(3)]
