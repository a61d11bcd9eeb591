"""What a large SDK sync costs a real `stepwise dev` (issue 27: "30,000 functions in one sync
took 15-20 s and stalled /healthz 1.2 s; GET /api/v1/functions then returned 31 MB in 6.7 s").

Against one `stepwise dev` process (SQLite by default, `--db postgresql://...` for PostgreSQL):
a sync of 30,000 functions (over the per-sync limit), syncs of the largest size accepted (one
app each, `APPS` apps), the slowest `/healthz` answer while they run, and
`GET /api/v1/functions` (its first page, and every page in turn). Prints one JSON line.

    python bench/sync_cost.py [--apps 30] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from stepwise.remote.registration import MAX_FUNCTIONS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sync_body(app: str, n: int) -> dict[str, object]:
    url = f"http://127.0.0.1:9/{app}/api/inngest"
    return {"appName": app, "url": url, "v": "0.1", "sdk": "js:v4.24.0",
            "framework": "express", "functions": [{
                "id": f"{app}-fn-{i}", "name": f"function {i}",
                "triggers": [{"event": f"{app}/event.{i % 50}"}],
                "concurrency": [{"limit": 5, "key": "event.data.user"}],
                "steps": {"step": {"id": "step", "name": "step",
                                   "runtime": {"type": "http",
                                               "url": f"{url}?fnId={app}-fn-{i}&stepId=step"}}}}
                for i in range(n)]}


async def measure(base: str, apps: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        slowest = 0.0
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal slowest
            while not stop.is_set():
                began = time.perf_counter()
                answer = await client.get("/healthz")
                answer.raise_for_status()
                slowest = max(slowest, time.perf_counter() - began)
                await asyncio.sleep(0.05)

        prober = asyncio.create_task(probe())
        began = time.perf_counter()
        too_many = await client.post("/fn/register", json=sync_body("huge", 30_000))
        refused_s = time.perf_counter() - began
        syncs: list[float] = []
        for a in range(apps):
            began = time.perf_counter()
            answer = await client.post("/fn/register", json=sync_body(f"app{a}", MAX_FUNCTIONS))
            answer.raise_for_status()
            syncs.append(time.perf_counter() - began)
        again_began = time.perf_counter()  # an unchanged re-sync (what `stepwise dev -u` sends)
        (await client.post("/fn/register", json=sync_body("app0", MAX_FUNCTIONS))
         ).raise_for_status()
        unchanged_s = time.perf_counter() - again_began
        stop.set()
        await prober
        began = time.perf_counter()
        first = await client.get("/api/v1/functions")
        first_s = time.perf_counter() - began
        began = time.perf_counter()
        url: str | None = "/api/v1/functions?limit=1000"
        total, pages, size = 0, 0, 0
        while url:
            page = await client.get(url)
            size += len(page.content)
            body = page.json()
            total += len(body["functions"])
            pages += 1
            url = body.get("next")
        all_s = time.perf_counter() - began
    return {"sync_30000": {"status": too_many.status_code, "s": round(refused_s, 3),
                           "error": too_many.json().get("error", "")[:80]},
            "syncs_of": MAX_FUNCTIONS, "apps": apps,
            "sync_s": {"first": round(syncs[0], 2), "max": round(max(syncs), 2),
                       "median": round(sorted(syncs)[len(syncs) // 2], 2)},
            "unchanged_resync_s": round(unchanged_s, 2),
            "healthz_slowest_s": round(slowest, 3),
            "functions_first_page": {"s": round(first_s, 3), "bytes": len(first.content),
                                     "functions": len(first.json()["functions"])},
            "functions_all_pages": {"s": round(all_s, 2), "pages": pages, "functions": total,
                                    "bytes": size}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=30)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        db = args.db or os.path.join(tmp, "sync.db")
        with open(os.path.join(tmp, "dev.log"), "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "stepwise.cli", "dev", "--port",
                                     str(port), "--db", db], stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            result = asyncio.run(measure(base, args.apps))
            result["db"] = "postgresql" if db.startswith("postgres") else "sqlite"
            print(json.dumps(result))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
