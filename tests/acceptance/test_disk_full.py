"""SQLite on a disk that fills up, against a real `stepwise dev`: refusals are 503 JSON (never a
500 or a crash), nothing acknowledged is lost, and the server takes events again as soon as
space returns, without a restart.

The disk is a small tmpfs the test mounts (root only, as CI runs; elsewhere the test skips).
A real full file system, rather than `RLIMIT_FSIZE` on the process: SQLite then meets ENOSPC
on whichever file it grows (the WAL, the shared-memory index, the database at a checkpoint),
as on a real disk, and the server's own log is not cut off.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import free_port, start, stop, wait_healthy, wait_until

APP = '''
import stepwise

app = stepwise.App("disk")


@app.function(id="keep", trigger=stepwise.on_event("fill.*"))
async def keep(ctx: stepwise.Context):
    head = await ctx.step.run("head", lambda: ctx.event.data["pad"][:64])
    tail = await ctx.step.run("tail", lambda: ctx.event.data["pad"][-64:])
    return {"head": head, "tail": tail}
'''
#: The disk, and the ballast that fills most of it once the server runs.
DISK_MB, BALLAST_MB = 8, 5
SENDERS = 4


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                              str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def post(url: str, body: Any) -> tuple[int, str, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_full_disk_answers_503_loses_nothing_acknowledged_and_recovers(
        tmp_path: Path, small_disk: Path) -> None:
    (tmp_path / "disk_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["dev", "disk_app:app", "--port", str(port), "--db", str(small_disk / "s.db"),
            "--lease-seconds", "3", "--poll-seconds", "0.2"]
    env = {"PYTHONPATH": str(tmp_path)}
    proc = start(args, tmp_path, env)
    acked: list[str] = []
    refusals: list[tuple[int, str, str]] = []
    health: list[int] = []
    lock = threading.Lock()
    try:
        wait_healthy(base, proc)
        (small_disk / "ballast").write_bytes(b"\0" * BALLAST_MB * 1024 * 1024)
        deadline = time.monotonic() + 60

        def send(sender: int) -> None:
            refused = 0
            for i in range(2000):  # bounded: each sender stops after 20 refusals or 60 s
                if refused >= 20 or time.monotonic() > deadline:
                    return
                event_id = f"ev-{sender}-{i}"
                answer = post(base + "/api/v1/events", {"name": "fill.up", "id": event_id,
                                                        "data": {"pad": os.urandom(3000).hex()}})
                with lock:
                    if answer[0] == 200:
                        acked.append(event_id)
                    else:
                        refused += 1
                        refusals.append(answer)
                if i % 10 == 0:
                    health.append(get(base + "/healthz")[0])
        senders = [threading.Thread(target=send, args=(n,)) for n in range(SENDERS)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        print(f"disk full: {len(acked)} events acknowledged, {len(refusals)} refused, "
              f"/healthz answered {sorted(set(health))}")
        assert proc.poll() is None, "the server died when the disk filled"
        assert refusals, "the disk never filled"
        assert len(acked) >= 10, len(acked)
        for status, content_type, text in refusals:
            assert status in (503, 507) and content_type == "application/json", (status, text)
            assert "full" in json.loads(text)["error"], text
        assert set(health) <= {200, 503}, health

        # Space returns: events are taken again, by the same process.
        (small_disk / "ballast").unlink()

        def taken() -> bool:
            answer = post(base + "/api/v1/events", {"name": "fill.up", "id": "after-" +
                                                    str(time.monotonic_ns()),
                                                    "data": {"pad": "after"}})
            assert answer[0] in (200, 503), answer
            if answer[0] == 200:
                acked.append(json.loads(answer[2])["ids"][0])
            return answer[0] == 200
        wait_until(taken, 20, "events taken again once space returned")

        def all_done(url: str) -> bool:
            return all(_completed(url, event_id) for event_id in acked)
        wait_until(lambda: all_done(base), 120, "every acknowledged event's run completed")
        assert get(base + "/healthz")[0] == 200
    finally:
        stop(proc)
    # After a restart, every acknowledged event is stored, with one completed run.
    proc = start(args, tmp_path, env)
    try:
        wait_healthy(base, proc)
        for event_id in acked:
            status, event = get(f"{base}/api/v1/events/{event_id}")
            assert status == 200, (event_id, event)
            assert len(event["runs"]) == 1 and _completed(base, event_id), event
    finally:
        stop(proc)


def _completed(base: str, event_id: str) -> bool:
    status, page = get(f"{base}/api/v1/runs?event_id={event_id}&limit=5")
    runs = page.get("runs", []) if status == 200 else []
    return len(runs) == 1 and runs[0]["status"] == "completed"
