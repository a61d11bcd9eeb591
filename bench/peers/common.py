"""What every peer's load script shares: timing helpers, the worker's memory, one JSON line out.

Every script runs one workload on one system and prints one JSON line of figures; `peers.py`
runs them alternately and makes the table."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import psutil

POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
#: Worker processes and concurrency for every system (the issue's honest settings).
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
#: Jobs run first and left out of the figures.
WARMUP = 200


def sleep_lead(n: int) -> float:
    """How far ahead `n` sleeping runs are due: after the slowest system has parked them all."""
    return 15 + n / 250


def wait(check: Callable[[], Any], timeout: float = 600, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("the workload did not finish in time")
        time.sleep(every)


def p50(values: list[float]) -> float:
    return statistics.median(values)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a prefork pool's too)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


def report(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), flush=True)


class Schema:
    """A fresh PostgreSQL schema for one measurement, dropped afterwards."""

    def __init__(self) -> None:
        import psycopg

        self.psycopg = psycopg
        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        sep = "&" if "?" in POSTGRES else "?"
        self.url = f"{POSTGRES}{sep}options={quote(f'-csearch_path={self.name}')}"

    def __enter__(self) -> Schema:
        with self.psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        with self.psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")

    def scalar(self, sql: str, *args: Any) -> Any:
        with self.psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(sql, args).fetchone()
            return row[0] if row else None


def spawn(args: list[str], cwd: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    log = open(os.path.join(cwd, f"proc-{time.time_ns()}.log"), "wb")  # noqa: SIM115
    return subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


PYTHON = sys.executable
