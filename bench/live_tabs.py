"""What open dashboard tabs cost the database: polling every 2 s vs live updates (issue 29).

    .venv/bin/python bench/live_tabs.py [--backend sqlite|postgres|both] [--tabs 1,20]
                                        [--seconds 20] [--runs 200]

For each backend: a fresh database (a SQLite file in a temporary directory; on PostgreSQL a
fresh schema of postgresql://postgres@127.0.0.1:5432/test or STEPWISE_BENCH_POSTGRES) with
--runs completed runs of a one-step function, served by `create_server` under uvicorn in
this process, with a worker of the app on a storage of its own (as `stepwise server` and
`stepwise worker` run). Every statement the server runs is counted (each `Tx` call: one, all,
exec, defer, raw_all, each of `each`/`commit_with`, and `write_statement`): the API requests
of the tabs and the live feed's change mark. Headless Chromium
(Debian's /usr/bin/chromium, Playwright) opens N tabs on /runs, in two modes: "polling" (the
script live.js blocked, so app.js polls every 2 s as it did before live updates) and "live".
After 4 s to settle, statements are counted over --seconds, first with nothing happening
("quiet"), then while one event a second starts a run ("1 event/s"; the statement storing
each event is counted too, in both modes). A row with no tab open is the floor. Prints
statements per second, and API requests per second from the tabs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import stepwise
from stepwise.server import create_server
from stepwise.storage import Storage, open_storage
from stepwise.worker import Worker

POSTGRES = os.environ.get("STEPWISE_BENCH_POSTGRES",
                          "postgresql://postgres@127.0.0.1:5432/test")
CHROMIUM = "/usr/bin/chromium"

app = stepwise.App("bench-live")


@app.function(id="one-step", trigger=stepwise.on_event("bench.go"), retries=0)
async def one_step(ctx: stepwise.Context) -> Any:
    return await ctx.step.run("only", lambda: ctx.event.data)


class Counted:
    """A `Tx` that counts the statements run through it."""

    def __init__(self, tx: Any, count: Callable[[int], None]) -> None:
        self._tx = tx
        self._count = count
        self.round_trips = tx.round_trips

    def one(self, query: str, /, **params: Any) -> Any:
        self._count(1)
        return self._tx.one(query, **params)

    def all(self, query: str, /, **params: Any) -> Any:
        self._count(1)
        return self._tx.all(query, **params)

    def exec(self, query: str, /, **params: Any) -> Any:
        self._count(1)
        return self._tx.exec(query, **params)

    def defer(self, query: str, /, **params: Any) -> Any:
        self._count(1)
        return self._tx.defer(query, **params)

    def raw_all(self, sql: str, params: dict[str, Any]) -> Any:
        self._count(1)
        return self._tx.raw_all(sql, params)

    def each(self, calls: list[Any]) -> Any:
        self._count(len(calls))
        return self._tx.each(calls)

    def commit_with(self, calls: list[Any]) -> Any:
        self._count(len(calls))
        return self._tx.commit_with(calls)

    def text(self, query: str, /) -> str:
        return str(self._tx.text(query))


def count_statements(storage: Storage) -> list[int]:
    """Patch `storage` to count its statements; the counter is the list's one item."""
    counter = [0]

    def add(n: int) -> None:
        counter[0] += n

    read, write, statement = storage.read, storage.write, storage.write_statement

    async def counted_read(op: Any, *args: Any, **kw: Any) -> Any:
        return await read(lambda tx, *a: op(Counted(tx, add), *a), *args, **kw)

    async def counted_write(op: Any, *args: Any, **kw: Any) -> Any:
        return await write(lambda tx, *a: op(Counted(tx, add), *a), *args, **kw)

    async def counted_statement(query: str, params: dict[str, Any], **kw: Any) -> Any:
        add(1)
        return await statement(query, params, **kw)

    storage.read = counted_read  # type: ignore[method-assign]
    storage.write = counted_write  # type: ignore[method-assign]
    storage.write_statement = counted_statement  # type: ignore[method-assign]
    return counter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(url: str, *, runs: int, tabs_list: list[int], seconds: float
                  ) -> list[dict[str, Any]]:
    import uvicorn
    from playwright.async_api import async_playwright

    storage = open_storage(url)
    await storage.open()
    # The worker on a storage of its own, as `stepwise worker` beside `stepwise server`: only
    # the server's statements (the API the tabs call, and the live feed) are counted.
    worker_storage = open_storage(url)
    await worker_storage.open()
    worker = Worker(app, worker_storage, poll_interval=0.2)
    await worker.start()
    api = create_server(storage)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    import httpx

    async with httpx.AsyncClient(base_url=base) as client:
        for start in range(0, runs, 100):
            await client.post("/api/v1/events", json=[
                {"name": "bench.go", "data": {"n": n}} for n in range(start, start + 100)])
        while (await client.get("/api/v1/runs?status=completed&limit=1000")
               ).json()["total"] < runs:
            await asyncio.sleep(0.2)
    counter = count_statements(storage)
    results = []
    async with async_playwright() as p, httpx.AsyncClient(base_url=base) as client:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for mode, tab_counts in (("none", [0]), ("polling", tabs_list), ("live", tabs_list)):
            for tabs in tab_counts:
                context = await browser.new_context()
                requests = [0]

                def seen(request: Any, requests: list[int] = requests) -> None:
                    if "/api/v1/" in request.url:
                        requests[0] += 1
                context.on("request", seen)
                if mode == "polling":  # as before live.js: app.js polls every 2 s
                    await context.route("**/assets/live.js", lambda route: route.abort())
                for _ in range(tabs):
                    page = await context.new_page()
                    await page.goto(base + "/runs")
                await asyncio.sleep(4)
                for activity in ("quiet", "1 event/s"):
                    counter[0], requests[0] = 0, 0
                    began = time.monotonic()
                    sent = 0
                    while (elapsed := time.monotonic() - began) < seconds:
                        if activity != "quiet" and sent <= elapsed:
                            await client.post("/api/v1/events",
                                              json={"name": "bench.go", "data": {"n": sent}})
                            sent += 1
                        await asyncio.sleep(0.05)
                    took = time.monotonic() - began
                    results.append({"mode": mode, "tabs": tabs, "activity": activity,
                                    "statements_per_s": counter[0] / took,
                                    "requests_per_s": requests[0] / took})
                    print(f"  {mode:8} {tabs:3} tabs {activity:10} "
                          f"{counter[0] / took:8.1f} statements/s "
                          f"{requests[0] / took:7.1f} API requests/s", flush=True)
                await context.close()
        await browser.close()
    server.should_exit = True
    await serving
    await worker.stop(grace=1.0)
    await worker_storage.close()
    await storage.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--tabs", default="1,20")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    tabs = [int(t) for t in args.tabs.split(",")]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(f"{backend}:", flush=True)
        if backend == "sqlite":
            tmp = tempfile.mkdtemp()
            try:
                asyncio.run(measure(f"sqlite:///{tmp}/bench.db", runs=args.runs,
                                    tabs_list=tabs, seconds=args.seconds))
            finally:
                shutil.rmtree(tmp)
        else:
            import psycopg

            schema = f"bench_live_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            try:
                sep = "&" if "?" in POSTGRES else "?"
                asyncio.run(measure(f"{POSTGRES}{sep}options=-csearch_path%3D{schema}",
                                    runs=args.runs, tabs_list=tabs, seconds=args.seconds))
            finally:
                with psycopg.connect(POSTGRES, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
