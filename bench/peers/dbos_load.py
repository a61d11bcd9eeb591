"""DBOS 3.4 (PostgreSQL) under the peers' workloads: one worker process whose queue runs 8
workflows at once, producers enqueueing with `DBOSClient`; the queue polls every 10 ms (its
default is 1 s), which is as fast as it goes. Durable: workflows and their steps are stored.

    python bench/peers/dbos_load.py jobs|steps|latency|sleepers N
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    CONCURRENCY,
    POSTGRES,
    PYTHON,
    WARMUP,
    p50,
    report,
    rss_mb,
    sleep_lead,
    spawn,
    stop,
    wait,
)

APP = textwrap.dedent(f'''
    import logging
    import os
    import signal
    import threading
    import time

    from dbos import DBOS

    DBOS(config={{"name": "peer", "system_database_url": os.environ["BENCH_DB"],
                 "dbos_system_schema": os.environ["BENCH_SCHEMA"],
                 "run_admin_server": False}})
    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def work():
        return time.time()

    @DBOS.step()
    def noop(i):
        return i

    @DBOS.workflow()
    def job():
        return work()

    @DBOS.workflow()
    def flow():
        for i in range(10):
            noop(i)
        return time.time()

    @DBOS.workflow()
    def sleeper(until):
        DBOS.sleep(max(0.0, until - time.time()))
        return work()

    if __name__ == "__main__":
        DBOS.launch()
        DBOS.register_queue("bench", worker_concurrency={CONCURRENCY},
                            polling_interval_sec=0.01)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stopped.set())
        stopped.wait()
        DBOS.destroy()
''')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["jobs", "steps", "latency", "sleepers"])
    parser.add_argument("n", type=int)
    options = parser.parse_args()
    import logging

    import psycopg
    from dbos import DBOSClient, EnqueueOptions

    logging.getLogger("dbos").setLevel(logging.WARNING)
    tmp = tempfile.mkdtemp()
    Path(tmp, "peer_dbos.py").write_text(APP)
    schema = f"bench_dbos_{uuid.uuid4().hex[:10]}"
    env = {"PYTHONPATH": tmp, "BENCH_DB": POSTGRES, "BENCH_SCHEMA": schema}
    worker = spawn([PYTHON, "peer_dbos.py"], tmp, env)
    client = DBOSClient(system_database_url=POSTGRES, dbos_system_schema=schema)

    def count(name: str) -> int:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            try:
                row = conn.execute(f"SELECT count(*) FROM {schema}.workflow_status WHERE "
                                   "status = 'SUCCESS' AND name LIKE %s", (f"%{name}",)
                                   ).fetchone()
            except psycopg.errors.UndefinedTable:
                return -1
            return int(row[0]) if row else 0

    def enqueue(name: str, *args: Any) -> Any:
        options_: EnqueueOptions = {"workflow_name": name, "queue_name": "bench"}
        return client.enqueue(options_, *args)

    try:
        wait(lambda: count("job") >= 0, 120)
        time.sleep(3)  # the worker migrates its schema table by table: let it finish
        for _ in range(WARMUP):
            enqueue("job")
        wait(lambda: count("job") >= WARMUP, 300)
        figures: dict[str, Any]
        if options.workload == "jobs":
            began = time.perf_counter()
            for _ in range(options.n):
                enqueue("job")
            wait(lambda: count("job") >= WARMUP + options.n)
            figures = {"jobs_per_s": options.n / (time.perf_counter() - began)}
        elif options.workload == "steps":
            began = time.perf_counter()
            for _ in range(options.n):
                enqueue("flow")
            wait(lambda: count("flow") >= options.n)
            elapsed = time.perf_counter() - began
            figures = {"per_step_ms": elapsed * 1000 / (options.n * 10),
                       "workflows_per_s": options.n / elapsed}
        elif options.workload == "latency":
            handles = []
            for _ in range(options.n):
                at = time.time()
                handles.append((enqueue("job"), at))
                time.sleep(max(0.0, at + 0.02 - time.time()))
            figures = {"first_execution_p50_ms": p50([(h.get_result() - at) * 1000
                                                      for h, at in handles])}
        else:
            wake = time.time() + sleep_lead(options.n)
            handles = [enqueue("sleeper", wake) for _ in range(options.n)]
            time.sleep(max(0.0, wake - time.time() - 3))
            memory = rss_mb(worker.pid)
            woke = [h.get_result() for h in handles]
            figures = {"sleeping_worker_rss_mb": memory, "wake_all_s": max(woke) - wake}
        report(figures)
    finally:
        stop(worker)
        client.destroy()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    main()
