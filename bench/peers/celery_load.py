"""Celery 5 on Redis under the peers' workloads: one worker process, concurrency 8 (prefork or
threads), tasks acknowledged late (after they run) so a killed worker's task is redelivered.
Redis here keeps nothing on disk, and Celery stores no step results: not durable.

    python bench/peers/celery_load.py jobs|latency|sleepers N [--pool prefork|threads]
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
import redis
from common import (
    CONCURRENCY,
    PYTHON,
    REDIS,
    WARMUP,
    p50,
    report,
    rss_mb,
    sleep_lead,
    spawn,
    stop,
)

APP = textwrap.dedent('''
    import os
    import time

    import redis
    from celery import Celery

    PREFIX = os.environ["BENCH_PREFIX"]
    app = Celery("peer", broker=os.environ["BENCH_REDIS"] + "/1")
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1,
                    task_default_queue=PREFIX, broker_transport_options={
                        "visibility_timeout": 3600}, worker_hijack_root_logger=False)
    store = redis.Redis.from_url(os.environ["BENCH_REDIS"] + "/2")

    @app.task(name="job")
    def job(key):
        store.hset(PREFIX + ":at", key, time.time())
        store.incr(PREFIX + ":done")
''')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["jobs", "latency", "sleepers"])
    parser.add_argument("n", type=int)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads"])
    options = parser.parse_args()
    tmp = tempfile.mkdtemp()
    Path(tmp, "peer_celery.py").write_text(APP)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {"PYTHONPATH": tmp, "BENCH_PREFIX": prefix, "BENCH_REDIS": REDIS}
    import os

    os.environ.update(env)
    sys.path.insert(0, tmp)
    import peer_celery

    store = redis.Redis.from_url(REDIS + "/2")
    worker = spawn([PYTHON, "-m", "celery", "-A", "peer_celery", "worker", "--pool",
                    options.pool, "--concurrency", str(CONCURRENCY), "--loglevel", "WARNING",
                    "-Q", prefix, "--without-gossip", "--without-mingle", "--without-heartbeat"],
                   tmp, env)

    def done() -> int:
        return int(store.get(prefix + ":done") or 0)

    def until(count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while done() < count:
            if time.monotonic() > deadline:
                raise TimeoutError("celery did not finish")
            time.sleep(0.05)

    try:
        for i in range(WARMUP):
            peer_celery.job.delay(f"w{i}")
        until(WARMUP, 120)
        figures: dict[str, Any]
        if options.workload == "jobs":
            began = time.perf_counter()
            for i in range(options.n):
                peer_celery.job.delay(f"j{i}")
            until(WARMUP + options.n)
            figures = {"jobs_per_s": options.n / (time.perf_counter() - began)}
        elif options.workload == "latency":
            sent = {}
            for i in range(options.n):
                at = time.time()
                peer_celery.job.delay(f"l{i}")
                sent[f"l{i}"] = at
                time.sleep(max(0.0, at + 0.02 - time.time()))
            until(WARMUP + options.n)
            ran = {k.decode(): float(v) for k, v in store.hgetall(prefix + ":at").items()}
            figures = {"first_execution_p50_ms": p50([(ran[k] - at) * 1000
                                                      for k, at in sent.items()])}
        else:  # countdown tasks: Celery keeps them in the worker's memory until due
            wake = time.time() + sleep_lead(options.n)
            from datetime import UTC, datetime

            eta = datetime.fromtimestamp(wake, UTC)
            for i in range(options.n):
                peer_celery.job.apply_async((f"s{i}",), eta=eta)
            time.sleep(max(0.0, wake - time.time() - 3))
            memory = rss_mb(worker.pid)
            until(WARMUP + options.n)
            ran = [float(v) for k, v in store.hgetall(prefix + ":at").items()
                   if k.startswith(b"s")]
            figures = {"sleeping_worker_rss_mb": memory, "wake_all_s": max(ran) - wake}
        report(figures)
    finally:
        stop(worker)
        for key in store.scan_iter(prefix + "*"):
            store.delete(key)
        broker = redis.Redis.from_url(REDIS + "/1")
        for key in broker.scan_iter(f"*{prefix}*"):
            broker.delete(key)


if __name__ == "__main__":
    main()
