"""Heavy step code: CPU-bound steps in threads vs child processes, and the media example
before vs after plain steps left the event loop.

    .venv/bin/python bench/heavy_work.py [--only cpu|media] [--repeat 3] [--before PATH]
                                         [--tree PATH]

`cpu`: R runs (--runs, 40) of an `async def` function with one plain step of pure-Python
arithmetic calibrated at start to take about --step-ms (200 ms) here, on a worker of
concurrency C (--concurrency, 8) on a fresh SQLite file: once with the step in threads (the
default executor) and once with `executor="process"` and
`ProcessOptions(size=os.cpu_count())`. The clock runs from `Engine.ingest` of the R events
until storage shows every run completed. Figures: runs/s for both, and processes/threads.

`media`: the media pipeline example (examples.media_pipeline), 8 uploads from 4 users (u0..u3,
two each: the function allows 2 runs per user at once) of one spoken sample, with
MEDIA_FLAKY_RATE=0, MEDIA_DB a fresh SQLite file, a worker of concurrency 8; the clock runs
from sending the 8 events until the 8 runs completed. Measured on the tree of --before (the
previous release; default /tmp/wt-old when it exists) and of --tree (default: this
repository), alternating. The steps table tells whether a run's three transcode steps ran at
once (latest start before earliest end).

Each measurement runs in a fresh interpreter with PYTHONPATH=TREE/src:TREE, so `stepwise` and
`examples` come from that tree (checked). The step code that runs in child processes is
`burn` below: the children are spawned and import this script as `__mp_main__`, hence the
`__main__` guard. Repetitions alternate the two sides; figures are medians. Every run must
complete with its output (and the media files and rows) present, or the command fails.

Prints a line per measurement, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CPU_EVENT = "bench.heavy_cpu"
MEDIA_EVENT = "media.uploaded"
MEDIA_FUNCTION = "transcribe-audio"
TRANSCODES = ("transcode-mp3", "transcode-opus", "transcode-wav16k")
UPLOADS = [(f"m{i}", f"u{i // 2}") for i in range(8)]  # (media_id, user_id): u0..u3, 2 each


# --- the step code (module level: a child process imports it by reference) ----------------

def burn(loops: int) -> dict[str, Any]:
    """Pure-Python arithmetic: holds the GIL (or a core) for the whole call."""
    started = time.time()
    x = 0
    for i in range(loops):
        x += i * i
    return {"pid": os.getpid(), "sum": x % 1_000_000_007, "start": started, "end": time.time()}


def expected_sum(loops: int) -> int:
    n = loops - 1
    return (n * (n + 1) * (2 * n + 1) // 6) % 1_000_000_007


def calibrate(step_ms: float) -> tuple[int, float]:
    """Loops for one burn() call of about step_ms here, and the median ms of 3 such calls."""
    loops = 300_000
    burn(loops)
    for _ in range(2):  # scale from a short probe, then once more from a call of ~step_ms
        best = min(_timed(loops) for _ in range(3))
        loops = max(1000, round(loops * step_ms / 1000 / best))
    return loops, statistics.median(_timed(loops) for _ in range(5)) * 1000


def _timed(loops: int) -> float:
    began = time.perf_counter()
    burn(loops)
    return time.perf_counter() - began


# --- one measurement, in a fresh interpreter on one tree ----------------------------------

def _check_tree(tree: Path, *modules: Any) -> None:
    for module in modules:
        if not Path(module.__file__).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"FAILED: {module.__name__} was imported from {module.__file__}, "
                             f"not from the tree {tree}")


async def _poll(storage: Any, app_id: str, function_id: str, runs: int,
                timeout: float) -> None:
    """Until `runs` runs of the function completed; fails at once when one failed."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await storage.read(lambda tx: tx.raw_all(
            "SELECT status, count(*) AS n FROM runs WHERE app_id = :app AND function_id = :fn "
            "GROUP BY status", {"app": app_id, "fn": function_id}))
        counts = {r["status"]: int(r["n"]) for r in rows}
        if counts.get("failed") or counts.get("cancelled"):
            raise SystemExit(f"FAILED: runs ended without completing: {counts}")
        if counts.get("completed", 0) >= runs:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: not every run completed within {timeout} s: {counts}")
        await asyncio.sleep(0.01)


async def _runs(storage: Any, app_id: str, function_id: str) -> list[dict[str, Any]]:
    return await storage.read(lambda tx: tx.raw_all(
        "SELECT id, status, output FROM runs WHERE app_id = :app AND function_id = :fn",
        {"app": app_id, "fn": function_id}))


async def measure_cpu(options: argparse.Namespace) -> dict[str, Any]:
    import stepwise
    from stepwise.engine import Engine
    from stepwise.events import StoredEvent
    from stepwise.processes import ProcessOptions
    from stepwise.storage import open_storage

    _check_tree(options.tree, stepwise)
    loops, in_process = options.loops, options.executor == "process"
    app = stepwise.App("heavy-cpu")

    if in_process:
        @app.function(id="cpu", trigger=stepwise.on_event(CPU_EVENT), retries=0,
                      executor="process")
        async def cpu_in_process(ctx: stepwise.Context) -> dict[str, Any]:
            return await ctx.step.run("burn", burn, loops)
    else:
        @app.function(id="cpu", trigger=stepwise.on_event(CPU_EVENT), retries=0)
        async def cpu_in_thread(ctx: stepwise.Context) -> dict[str, Any]:
            return await ctx.step.run("burn", burn, loops)

    tmp = tempfile.mkdtemp(prefix="stepwise-heavy-cpu-")
    try:
        storage = open_storage(f"sqlite:///{tmp}/bench.db")
        await storage.open()
        processes = ProcessOptions(size=os.cpu_count() or 1) if in_process else None
        worker = stepwise.Worker(app, storage, concurrency=options.concurrency,
                                 processes=processes)
        await worker.start()
        producer = Engine(storage)
        events = [StoredEvent(id=f"cpu-{i}", name=CPU_EVENT, data="{}",
                              ts=producer.clock.now_ms()) for i in range(options.runs)]
        try:
            sent_wall = time.time()
            began = time.perf_counter()
            await producer.ingest(events)
            await _poll(storage, app.id, "cpu", options.runs, options.timeout)
            seconds = time.perf_counter() - began
            rows = await _runs(storage, app.id, "cpu")
        finally:
            await worker.stop()
            await storage.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    outputs = [json.loads(r["output"]) if r["output"] else None for r in rows]
    want = expected_sum(loops)
    wrong = [o for r, o in zip(rows, outputs, strict=True)
             if r["status"] != "completed" or not o or o.get("sum") != want]
    if len(rows) != options.runs or wrong:
        raise SystemExit(f"FAILED: {len(rows)} runs of {options.runs}, {len(wrong)} without "
                         f"the right output, e.g. {wrong[:3]}")
    pids = {o["pid"] for o in outputs}
    if in_process and os.getpid() in pids:
        raise SystemExit("FAILED: executor='process' step code ran in the worker's process")
    if not in_process and pids != {os.getpid()}:
        raise SystemExit(f"FAILED: thread step code ran in other processes: {pids}")
    starts = sorted(o["start"] for o in outputs)
    return {
        "executor": options.executor, "seconds": seconds, "runs_per_s": options.runs / seconds,
        "processes": len(pids) if in_process else 0,
        "step_ms_median": statistics.median((o["end"] - o["start"]) * 1000 for o in outputs),
        "first_step_start_ms": (starts[0] - sent_wall) * 1000,
        # runs/s from the first step's start (leaves out the children's spawn, in processes)
        "runs_per_s_from_first_step": options.runs / (seconds - (starts[0] - sent_wall)),
        "stepwise": stepwise.__file__,
    }


def make_sample(out: str) -> str:
    from examples.media_pipeline.audio import speak
    from examples.media_pipeline.sample import SENTENCE

    return speak(SENTENCE, out)


async def measure_media(options: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="stepwise-heavy-media-"))
    os.environ["MEDIA_DB"] = str(tmp / "media.db")
    os.environ["MEDIA_FLAKY_RATE"] = "0"
    os.environ.pop("MEDIA_WORKDIR", None)
    from examples.media_pipeline import store
    from examples.media_pipeline.sample import SENTENCE

    import stepwise
    from examples import media_pipeline
    from stepwise.engine import Engine
    from stepwise.events import StoredEvent
    from stepwise.storage import open_storage

    _check_tree(options.tree, stepwise, media_pipeline)
    try:
        sample = tmp / "talk.wav"
        shutil.copyfile(options.sample, sample)
        storage = open_storage(f"sqlite:///{tmp}/runs.db")
        await storage.open()
        worker = stepwise.Worker(media_pipeline.app, storage, concurrency=options.concurrency)
        await worker.start()
        producer = Engine(storage)
        events = [StoredEvent(id=f"upload-{media_id}", name=MEDIA_EVENT,
                              data=json.dumps({"media_id": media_id, "user_id": user_id,
                                               "path": str(sample)}),
                              ts=producer.clock.now_ms()) for media_id, user_id in UPLOADS]
        try:
            began = time.perf_counter()
            await producer.ingest(events)
            await _poll(storage, media_pipeline.app.id, MEDIA_FUNCTION, len(UPLOADS),
                        options.timeout)
            seconds = time.perf_counter() - began
            rows = await _runs(storage, media_pipeline.app.id, MEDIA_FUNCTION)
            steps = await storage.read(lambda tx: tx.raw_all(
                "SELECT run_id, id, status, attempts, started_at, ended_at FROM steps", {}))
        finally:
            await worker.stop()
            await storage.close()
        outputs = check_media(rows, store, SENTENCE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": seconds, **timeline(rows, outputs, steps),
            "stepwise": stepwise.__file__, "example": media_pipeline.__file__}


def check_media(rows: list[dict[str, Any]], store: Any, sentence: str) -> dict[str, Any]:
    """Every upload's run completed, its three files written, its transcript, chunks and
    notification stored. Returns the outputs by run id."""
    outputs = {r["id"]: json.loads(r["output"]) for r in rows if r["output"]}
    problems = [r["id"] for r in rows if r["status"] != "completed" or r["id"] not in outputs]
    seen = sorted(o.get("media_id", "") for o in outputs.values())
    if len(rows) != len(UPLOADS) or problems or seen != sorted(m for m, _ in UPLOADS):
        raise SystemExit(f"FAILED: {len(rows)} media runs, not completed: {problems}, "
                         f"media seen: {seen}")
    words = set(sentence.split())
    for out in outputs.values():
        media_id = out["media_id"]
        sizes = {fmt: Path(p).stat().st_size if Path(p).is_file() else 0
                 for fmt, p in out["files"].items()}
        heard = set(out["text"].split())
        if sorted(sizes) != ["mp3", "opus", "wav16k"] or min(sizes.values()) < 1000:
            raise SystemExit(f"FAILED: {media_id}: transcoded files missing: {sizes}")
        if out["segments"] < 1 or len(heard & words) < len(words) * 0.6:
            raise SystemExit(f"FAILED: {media_id}: transcript {out['text']!r}")
        if len(store.rows("media_segments", media_id)) != out["segments"] \
                or len(store.rows("media_chunks", media_id)) != out["chunks"] \
                or len(store.rows("media_notifications", media_id)) != 1:
            raise SystemExit(f"FAILED: {media_id}: segments, chunks or notification missing")
    return outputs


def timeline(rows: list[dict[str, Any]], outputs: dict[str, Any],
             steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether each run's three transcodes overlapped; run m0's steps (ms from its first)."""
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for s in steps:
        by_run.setdefault(s["run_id"], {})[s["id"]] = s
    overlapped: dict[str, bool] = {}
    one: dict[str, list[int]] = {}
    for run_id, out in outputs.items():
        mine = by_run.get(run_id, {})
        spans = [(mine[t]["started_at"], mine[t]["ended_at"]) for t in TRANSCODES if t in mine]
        if len(spans) != 3 or any(a is None or b is None for a, b in spans):
            raise SystemExit(f"FAILED: {out['media_id']}: transcode steps missing: {mine}")
        overlapped[out["media_id"]] = max(a for a, _ in spans) < min(b for _, b in spans)
        if out["media_id"] == "m0":
            zero = min(s["started_at"] for s in mine.values() if s["started_at"] is not None)
            one = {sid: [s["started_at"] - zero, s["ended_at"] - zero]
                   for sid, s in sorted(mine.items(), key=lambda kv: kv[1]["started_at"] or 0)
                   if s["started_at"] is not None and s["ended_at"] is not None}
    return {"transcodes_overlap_m0": overlapped["m0"],
            "runs_with_transcodes_overlapping": sum(overlapped.values()),
            "m0_steps_ms": one}


# --- the command: measurements in subprocesses, alternating -------------------------------

def measure(kind: str, tree: Path, **extra: Any) -> dict[str, Any]:
    """One measurement on `tree` in a fresh interpreter: its JSON line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree)])}
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", kind,
            "--tree", str(tree)]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"FAILED: {kind} measurement on {tree} (exit {done.returncode}): "
                         f"{lines[-1] if lines else 'no output'}")
    return json.loads(lines[-1])


def git_rev(tree: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "src", "examples"],
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + (" (src/examples modified)" if dirty else "") \
        if done.returncode == 0 else None


def run_cpu(options: argparse.Namespace) -> dict[str, Any]:
    loops, call_ms = calibrate(options.step_ms)
    print(f"cpu: burn({loops}) takes {call_ms:.0f} ms here; {options.runs} runs, "
          f"concurrency {options.concurrency}, os.cpu_count()={os.cpu_count()}", flush=True)
    rounds: dict[str, list[dict[str, Any]]] = {"thread": [], "process": []}
    for r in range(options.repeat):
        order = ("thread", "process") if r % 2 == 0 else ("process", "thread")
        for executor in order:
            m = measure("cpu", options.tree, executor=executor, loops=loops, runs=options.runs,
                        concurrency=options.concurrency, timeout=options.timeout)
            rounds[executor].append(m)
            label = "processes" if executor == "process" else "threads"
            print(f"  [{r + 1}] {label:9} {m['seconds']:6.2f} s  {m['runs_per_s']:5.2f} runs/s"
                  f"  step {m['step_ms_median']:6.0f} ms median  first step started "
                  f"{m['first_step_start_ms']:4.0f} ms after sending", flush=True)
    threads = statistics.median(m["runs_per_s"] for m in rounds["thread"])
    processes = statistics.median(m["runs_per_s"] for m in rounds["process"])
    print(f"cpu: threads {threads:.2f} runs/s, processes {processes:.2f} runs/s: "
          f"x{processes / threads:.2f}", flush=True)
    return {
        "runs": options.runs, "concurrency": options.concurrency, "loops": loops,
        "step_ms_calibrated": round(call_ms, 1), "cpu_count": os.cpu_count(),
        "process_pool_size": os.cpu_count(),
        "threads_runs_per_s_median": round(threads, 3),
        "processes_runs_per_s_median": round(processes, 3),
        "ratio_processes_over_threads": round(processes / threads, 3),
        "ratio_from_first_step": round(
            statistics.median(m["runs_per_s_from_first_step"] for m in rounds["process"])
            / statistics.median(m["runs_per_s_from_first_step"] for m in rounds["thread"]), 3),
        "ideal_runs_per_s": {"threads": round(1000 / call_ms, 2),
                             "processes": round(1000 / call_ms * (os.cpu_count() or 1), 2)},
        "rounds": {k: [{"seconds": round(m["seconds"], 3),
                        "runs_per_s": round(m["runs_per_s"], 3),
                        "step_ms_median": round(m["step_ms_median"], 1),
                        "first_step_start_ms": round(m["first_step_start_ms"], 1),
                        "runs_per_s_from_first_step": round(m["runs_per_s_from_first_step"],
                                                            3)}
                       for m in v] for k, v in rounds.items()},
        "stepwise": rounds["thread"][0]["stepwise"],
    }


def run_media(options: argparse.Namespace) -> dict[str, Any]:
    trees = ({"before": options.before} if options.before else {}) | {"after": options.tree}
    if not options.before:
        print("media: no --before tree (and /tmp/wt-old is absent): measuring the current "
              "tree only", flush=True)
    sample_dir = Path(tempfile.mkdtemp(prefix="stepwise-heavy-sample-"))
    try:
        sample = sample_dir / "talk.wav"
        measure("sample", options.tree, out=sample)
        if sample.stat().st_size < 10_000:
            raise SystemExit(f"FAILED: the spoken sample {sample} is too small")
        print(f"media: {len(UPLOADS)} uploads from 4 users of a {sample.stat().st_size} byte "
              f"sample, concurrency {options.concurrency}; trees: "
              + ", ".join(f"{k} {v}" for k, v in trees.items()), flush=True)
        rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
        for r in range(options.repeat):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for side in order:
                m = measure("media", trees[side], sample=sample,
                            concurrency=options.concurrency, timeout=options.timeout)
                rounds[side].append(m)
                print(f"  [{r + 1}] {side:6} {m['seconds']:6.2f} s  transcodes overlapped in "
                      f"{m['runs_with_transcodes_overlapping']}/{len(UPLOADS)} runs "
                      f"(m0: {m['transcodes_overlap_m0']})", flush=True)
    finally:
        shutil.rmtree(sample_dir, ignore_errors=True)
    figures: dict[str, Any] = {"uploads": len(UPLOADS), "users": 4,
                               "concurrency": options.concurrency}
    for side, ms in rounds.items():
        figures[side] = {
            "tree": str(trees[side]), "git": options.git.get(trees[side]),
            "seconds_median": round(statistics.median(m["seconds"] for m in ms), 3),
            "seconds": [round(m["seconds"], 3) for m in ms],
            "transcodes_overlap_m0": [m["transcodes_overlap_m0"] for m in ms],
            "runs_with_transcodes_overlapping": [m["runs_with_transcodes_overlapping"]
                                                 for m in ms],
            "m0_steps_ms_first_round": ms[0]["m0_steps_ms"],
            "stepwise": ms[0]["stepwise"], "example": ms[0]["example"],
        }
    line = "media: " + ", ".join(f"{side} {figures[side]['seconds_median']:.2f} s"
                                 for side in rounds)
    if "before" in rounds:
        figures["speedup_before_over_after"] = round(
            figures["before"]["seconds_median"] / figures["after"]["seconds_median"], 3)
        line += f": x{figures['speedup_before_over_after']:.2f} faster"
    print(line, flush=True)
    return figures


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("cpu", "media"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the code tree measured (its src/ and examples/)")
    old = Path("/tmp/wt-old")
    parser.add_argument("--before", type=Path, default=old if old.is_dir() else None,
                        help="the previous release's tree, for media (default /tmp/wt-old)")
    parser.add_argument("--runs", type=int, default=40, help="cpu: runs")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=200.0, help="cpu: one step's time")
    parser.add_argument("--timeout", type=float, default=600.0)
    # one measurement (internal)
    parser.add_argument("--measure", choices=("cpu", "media", "sample"), help=argparse.SUPPRESS)
    parser.add_argument("--executor", choices=("thread", "process"), help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.tree = options.tree.resolve()
    if options.before is not None:
        options.before = options.before.resolve()
        if not (options.before / "src" / "stepwise").is_dir():
            parser.error(f"--before {options.before}: no src/stepwise there")
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    return options


def main(options: argparse.Namespace) -> dict[str, Any]:
    if options.measure == "cpu":
        return asyncio.run(measure_cpu(options))
    if options.measure == "media":
        return asyncio.run(measure_media(options))
    if options.measure == "sample":
        return {"sample": make_sample(options.out)}
    began = time.monotonic()
    load = os.getloadavg()
    figures: dict[str, Any] = {
        "bench": "heavy_work", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "repeat": options.repeat, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "tree": str(options.tree),
        "git": git_rev(options.tree),
    }
    options.git = {tree: git_rev(tree) for tree in (options.tree, options.before) if tree}
    if options.only in (None, "cpu"):
        figures["cpu"] = run_cpu(options)
    if options.only in (None, "media"):
        figures["media"] = run_media(options)
    if git_rev(options.tree) != figures["git"]:  # others committed meanwhile
        figures["git_end"] = git_rev(options.tree)
    figures["loadavg_1m"] = {"start": round(load[0], 2), "end": round(os.getloadavg()[0], 2)}
    figures["total_seconds"] = round(time.monotonic() - began, 1)
    return figures


if __name__ == "__main__":
    print(json.dumps(main(parse(sys.argv[1:]))))
