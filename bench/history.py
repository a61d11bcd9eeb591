"""History that grows: does reading it stay flat? (issue "Data lifecycle")

    .venv/bin/python bench/history.py [--backend sqlite|postgres|both] [--sizes 10000,1000000]
                                      [--repeat 30] [--out PATH] [--label TEXT] [--keep]
                                      [--no-analyze] [--postgres URL]

For each backend and each size N: a fresh database (a SQLite file in a temporary directory; on
PostgreSQL a fresh schema of the database at --postgres, or STEPWISE_BENCH_POSTGRES, default
postgresql://postgres@127.0.0.1:5432/test, used through `?options=-csearch_path=<schema>` as the
tests do), its schema made by opening stepwise's own storage (so the migrations run), the 20
functions of one app `shop` registered with `Engine.register`, then N finished runs written
straight into the tables with bulk SQL (a recursive CTE on SQLite, generate_series on
PostgreSQL; one transaction), shaped like a real deployment's history:

- 20 functions, a few much bigger than others (30%, 20%, 12%, 8% of the runs; the other 16
  share 30%), triggered by 10 event names (function k by name k % 10); one event per run, data
  `{"user": {"id": U, "name": "uU"}, "order": O}` over 10,000 users;
- 90% completed (3 steps with small JSON outputs; 5% of them retried one step once: one failure
  row), 8% failed (2 completed steps and a failed one after 4 attempts, with a traceback-sized
  error; 4 failure rows), 2% cancelled (1 step); 1 to 3 log lines per run;
- created over the last 30 days (ms since the epoch, as `clock.now_ms()` stores them), ids
  made as `payloads.new_id` makes them (time-ordered ULIDs from each run's own creation time);
- plus 100 queued runs with their queue rows, due now, for the lease to take.

On PostgreSQL the tables are then VACUUMed and ANALYZEd, as autovacuum would after such a
load (--no-analyze leaves them as loaded); SQLite is left as stepwise leaves it (no ANALYZE).

Then, against that database, each operation is called --repeat times (30; after 2 warm-up
calls; the operations interleaved round by round) and timed with time.perf_counter: the HTTP
ones through the real ASGI app (`create_server`) in process with httpx.AsyncClient and
ASGITransport, so the figure is the server's cost (routing, engine, storage, JSON); the lease
is `Engine.lease` (the general path) and `Engine.lease_runs` (a worker's, `lease_plain` on
PostgreSQL) of one queued run, released again (untimed) so every round has one to take.
Operations: the runs list and each of its filters (function, status, event_name,
event_data=user.id=U, event_id, since, since+until, before), the search `q` (a data field, a
common and a rare error word, both at once, an event name, a run id's start, the failed list
searched, and failed runs of one event name), a run's detail, the events list,
events by name, one event, the functions list, the function stats (24 h and a week),
/healthz, /metrics. Every runs list also counts its matches (`total`, up to 1,000) where the
code does.

Figures per backend: p50 (p95) ms of each operation at each size, the ratio of the p50 at the
largest size to the smallest ("OK" within 2x, else "SLOW"); database bytes per run and per step
(SQLite: the file after a checkpoint; PostgreSQL: pg_total_relation_size summed over the
schema's tables) and the generation's time. Prints a table per backend, then one JSON line
(--out PATH writes it too; recorded figures live in bench/recorded/). The databases are removed
at the end unless --keep (then their locations are printed, for EXPLAIN). Exits non-zero only
on errors, never on SLOW. stepwise is imported as the venv finds it (this repository's src/);
PYTHONPATH=<tree>/src measures another tree, such as a commit exported with `git archive`
(recorded as `stepwise_from`, with --label saying which; `git` is then null). Where the code
keeps function stats in a rollup (`Engine.roll_up_stats`), it is brought up to date after the
generation, as a running server's passes would have (`rollup_s`; null without one). Where it
has the run search index (`run_terms`), the history is indexed as an upgraded database is,
when the storage opens (`index_s`, VACUUM ANALYZE of the index included on PostgreSQL; null
without one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import psycopg
from psycopg.rows import dict_row

import stepwise
from stepwise.engine import Engine
from stepwise.server import create_server
from stepwise.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("STEPWISE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
APP_ID = "shop"
QUEUED = 100
USERS = 10_000
DAY_MS = 86_400_000
SPAN_MS = 30 * DAY_MS
WARMUP = 2
SLOW_RATIO = 2.0
EVENT_NAMES = ["order.created", "order.paid", "order.shipped", "user.signup", "user.updated",
               "invoice.due", "payment.failed", "cart.abandoned", "report.requested",
               "webhook.received"]
FUNCTION_IDS = ["process-order", "capture-payment", "ship-order", "send-welcome",
                "sync-profile", "remind-invoice", "retry-payment", "recover-cart",
                "build-report", "route-webhook", "score-fraud", "notify-warehouse",
                "update-tracking", "add-to-crm", "reindex-user", "email-invoice",
                "alert-finance", "send-coupon", "export-report", "audit-webhook"]
#: Each function's share of the runs, per mille (a few big ones, a long tail).
WEIGHTS = [300, 200, 120, 80, 40, 30, 30, 25, 25, 20, 20, 15, 15, 15, 12, 12, 10, 10, 10, 11]
#: The rarest event name (functions 9 and 19: 3.1% of the runs), for the event_name filter.
RARE_NAME = EVENT_NAMES[9]
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TABLES = ["functions", "function_triggers", "apps", "events", "runs", "steps", "failures",
          "run_logs", "queue"]
STEPS = [(0, "load-order"), (1, "charge"), (2, "notify")]
COUNTED = ("runs", "steps", "events", "run_logs", "failures")

assert sum(WEIGHTS) == 1000 and len(WEIGHTS) == len(FUNCTION_IDS)


# --- the data ----------------------------------------------------------------------------

def definitions() -> list[Any]:
    """The app's 20 function definitions, as a worker of it would register them."""
    app = stepwise.App(APP_ID)
    for k, function_id in enumerate(FUNCTION_IDS):
        app.function(id=function_id, trigger=stepwise.on_event(EVENT_NAMES[k % 10]),
                     retries=3)(_body)
    return [f.definition() for f in app.functions.values()]


def _body(ctx: stepwise.Context) -> None:  # never runs: the history is written directly
    raise AssertionError("not executed")


def lit(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def around(template: dict[str, Any], marker: str = "@@") -> tuple[str, str]:
    """The compact JSON of `template` split at the one string holding `marker`, as two SQL
    literals to put an SQL value between."""
    text = json.dumps(template, separators=(",", ":"))
    head, tail = text.split(marker)
    return lit(head), lit(tail)


_STACK = "".join(
    f'  File "/srv/shop/{where}.py", line {line}, in {fn}\n    {code}\n'
    for where, line, fn, code in [
        ("stepwise/context", 150, "run", "result = await self._ex.step_code(call, fn, args)"),
        ("shop/notify", 41, "notify", "await mailer.send(user.email, receipt(order))"),
        ("shop/mailer", 88, "send", "response = await self.client.post(self.url, json=body)"),
        ("httpx/_client", 1629, "post", "return await self.request('POST', url, json=json)")])
FAILED_ERROR = {"name": "SMTPTimeout", "message": "notify failed for order @@: smtp timeout",
                "stack": "Traceback (most recent call last):\n" + _STACK +
                         "SMTPTimeout: smtp timeout after 10 s\n", "step_id": "notify"}
RETRIED_ERROR = {"name": "CardDeclined", "message": "card declined for order @@",
                 "stack": "Traceback (most recent call last):\n" + _STACK.split("\n")[0] +
                          "\nCardDeclined: try again\n", "step_id": "charge"}
CANCELLED_ERROR = '{"name":"RunCancelled","message":"cancelled: bulk cancel"}'


def ulid(ms: str, random40: str, i: str) -> str:
    """An SQL expression of a 26-character id laid out as `payloads.new_id`'s: 10 characters
    of the time in ms, then 16 of randomness (here 40 random bits, then 40 bits of the row's
    number, so ids never collide)."""
    def chars(expr: str, n: int) -> list[str]:
        return [f"substr('{CROCKFORD}', CAST((({expr}) >> {5 * (n - 1 - k)}) & 31 AS INTEGER)"
                " + 1, 1)" for k in range(n)]
    return " || ".join(chars(ms, 10) + chars(random40, 8) + chars(i, 8))


def generation_sql(dialect: str, runs: int, now: int) -> list[str]:
    """The statements that write the history (and the queued runs) into an empty schema."""
    total = runs + QUEUED
    if dialect == "sqlite":
        series = (f"WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s "
                  f"WHERE i < {total - 1}) SELECT i, {{draws}} FROM s")

        def rand(m: int) -> str:
            return f"(abs(random()) % {m})"
    else:
        series = (f"SELECT i, {{draws}} FROM generate_series(CAST(0 AS BIGINT), {total - 1}) "
                  "AS s(i)")

        def rand(m: int) -> str:
            return f"CAST(floor(random() * {m}) AS BIGINT)"
    slot = max(1, (SPAN_MS - 120_000) // max(1, runs))
    start = now - SPAN_MS
    bounds, fn_case = 0, ["CASE"]
    for k, w in enumerate(WEIGHTS):
        bounds += w
        fn_case.append(f"WHEN p_fn < {bounds} THEN {k}")
    fn_case.append("END")
    draws = ", ".join([f"{rand(1000)} AS p_fn", f"{rand(1000)} AS p_st",
                       f"{rand(100)} AS p_retry", f"{rand(USERS)} AS uid",
                       f"{rand(slot)} AS jit", f"{rand(1000)} AS p_dur",
                       f"{rand(100_000)} AS cents", f"{rand(1 << 40)} AS rbits",
                       f"{rand(1 << 40)} AS ebits"])
    functions = " UNION ALL ".join(
        f"SELECT {k} AS k, {lit(f)} AS id, {lit(EVENT_NAMES[k % 10])} AS name"
        for k, f in enumerate(FUNCTION_IDS))
    steps = " UNION ALL ".join(f"SELECT {seq} AS seq, {lit(sid)} AS id" for seq, sid in STEPS)
    attempts = " UNION ALL ".join(f"SELECT {a} AS a" for a in range(1, 5))
    failed_head, failed_tail = around(FAILED_ERROR)
    retried_head, retried_tail = around(RETRIED_ERROR)
    # Derived per run: function, status, user, times (the run's duration grows with its
    # function's number: 20 ms to 5.4 s; a failed run also waited out 2 + 4 + 8 s of backoff).
    derived = f"""
        SELECT i, {' '.join(fn_case)} AS fn,
               CASE WHEN i >= {runs} THEN 'queued' WHEN p_st < 900 THEN 'completed'
                    WHEN p_st < 980 THEN 'failed' ELSE 'cancelled' END AS st,
               CASE WHEN p_retry < 5 THEN 1 ELSE 0 END AS retried, uid, 100000 + i AS ord, cents,
               CASE WHEN i >= {runs} THEN {now - 60_000} + (i - {runs}) * 100
                    ELSE {start} + i * {slot} + jit END AS created,
               p_dur, rbits, ebits
        FROM d"""
    return [
        f"CREATE TEMP TABLE d AS {series.format(draws=draws)}",
        f"CREATE TEMP TABLE fns AS {functions}",
        f"CREATE TEMP TABLE step_defs AS {steps}",
        f"CREATE TEMP TABLE att AS {attempts}",
        f"""CREATE TEMP TABLE g AS
            SELECT i, fn, st, retried, uid, ord, cents, created,
                   CASE WHEN st = 'queued' THEN NULL ELSE created + 3 END AS started,
                   CASE WHEN st = 'queued' THEN NULL
                        ELSE created + 3 + (fn + 1) * (20 + p_dur / 4)
                             + CASE WHEN st = 'failed' THEN 14000 ELSE 0 END END AS ended,
                   (fn + 1) * (20 + p_dur / 4) AS dur,
                   {ulid('created', 'rbits', 'i')} AS run_id,
                   {ulid('created - 3', 'ebits', 'i')} AS event_id
            FROM ({derived}) x ORDER BY i""",
        """INSERT INTO events (id, name, data, ts, received_at)
            SELECT g.event_id, fns.name,
                   '{"user":{"id":' || g.uid || ',"name":"u' || g.uid || '"},"order":'
                   || g.ord || '}', g.created - 3, g.created - 3
            FROM g JOIN fns ON fns.k = g.fn ORDER BY g.i""",
        f"""INSERT INTO runs (id, app_id, function_id, event_id, status, output, error,
                              attempts, retry, created_at, started_at, ended_at, lease_epoch)
            SELECT g.run_id, {lit(APP_ID)}, fns.id, g.event_id, g.st,
                   CASE WHEN g.st = 'completed' THEN '{{"ok":true,"order":' || g.ord || '}}'
                        END,
                   CASE WHEN g.st = 'failed' THEN {failed_head} || g.ord || {failed_tail}
                        WHEN g.st = 'cancelled' THEN {lit(CANCELLED_ERROR)} END,
                   1, 0, g.created, g.started, g.ended,
                   CASE WHEN g.st = 'queued' THEN 0 WHEN g.st = 'failed' THEN 4
                        ELSE 1 + g.retried END
            FROM g JOIN fns ON fns.k = g.fn ORDER BY g.i""",
        f"""INSERT INTO steps (run_id, id, seq, status, attempts, output, error, started_at,
                               ended_at, kind)
            SELECT g.run_id, s.id, s.seq,
                   CASE WHEN g.st = 'failed' AND s.seq = 2 THEN 'failed' ELSE 'completed' END,
                   CASE WHEN g.st = 'failed' AND s.seq = 2 THEN 4
                        WHEN g.retried = 1 AND g.st = 'completed' AND s.seq = 1 THEN 2
                        ELSE 1 END,
                   CASE WHEN s.seq = 0 THEN '{{"order":' || g.ord || ',"total":' || g.cents
                                            || ',"items":' || (g.cents % 7 + 1) || '}}'
                        WHEN s.seq = 1 THEN '{{"charged":true,"amount":' || g.cents
                                            || ',"payment_id":"pay_' || g.ord || '"}}'
                        WHEN g.st = 'completed' THEN '{{"sent":true,"to":"u' || g.uid
                                                     || '@example.com"}}' END,
                   CASE WHEN g.st = 'failed' AND s.seq = 2
                        THEN {failed_head} || g.ord || {failed_tail} END,
                   g.started + s.seq * g.dur / 3,
                   CASE WHEN g.st = 'failed' AND s.seq = 2 THEN g.ended
                        ELSE g.started + (s.seq + 1) * g.dur / 3 END,
                   'run'
            FROM g JOIN step_defs s ON s.seq = 0 OR g.st IN ('completed', 'failed')
            WHERE g.st <> 'queued' ORDER BY g.i, s.seq""",
        f"""INSERT INTO failures (run_id, step_id, attempt, error, started_at, ended_at)
            SELECT g.run_id, 'notify', a.a, {failed_head} || g.ord || {failed_tail},
                   g.ended - (5 - a.a) * 3000, g.ended - (4 - a.a) * 3000
            FROM g JOIN att a ON a.a <= 4 WHERE g.st = 'failed'
            UNION ALL
            SELECT g.run_id, 'charge', 1, {retried_head} || g.ord || {retried_tail},
                   g.started, g.started + g.dur / 3
            FROM g WHERE g.st = 'completed' AND g.retried = 1""",
        """INSERT INTO run_logs (run_id, seq, at, level, step_id, message)
            SELECT g.run_id, a.a - 1, g.started + (a.a - 1) * g.dur / 3,
                   CASE WHEN a.a = 3 THEN 'ERROR' ELSE 'INFO' END,
                   CASE WHEN a.a = 1 THEN 'load-order' END,
                   CASE WHEN a.a = 1 THEN 'loaded order ' || g.ord || ' of user u' || g.uid
                        WHEN a.a = 2 THEN 'charged ' || g.cents || ' cents'
                        ELSE 'notify failed, giving up: smtp timeout' END
            FROM g JOIN att a ON a.a <= CASE g.st WHEN 'failed' THEN 3 WHEN 'completed'
                                              THEN 2 ELSE 1 END
            WHERE g.st <> 'queued'""",
        f"""INSERT INTO queue (run_id, app_id, function_id, available_at, priority)
            SELECT g.run_id, {lit(APP_ID)}, fns.id, g.created, 0
            FROM g JOIN fns ON fns.k = g.fn WHERE g.st = 'queued'""",
    ]


PROBES_SQL = {
    # a run in the middle of history (its event, its user), and a failed run near it
    "middle": "SELECT run_id, event_id, uid FROM g WHERE i = {mid}",
    "failed": "SELECT run_id, ord FROM g WHERE st = 'failed' AND i >= {mid} ORDER BY i LIMIT 1",
    "user_runs": "SELECT COUNT(*) AS n FROM g WHERE uid = {uid} AND st <> 'queued'",
}


# --- the databases -----------------------------------------------------------------------

@dataclass
class Database:
    """One fresh database of a backend: where it is, and how to fill, size and drop it."""

    backend: str
    url: str
    place: str  # the SQLite file, or the PostgreSQL schema
    tmpdir: str | None = None

    @classmethod
    def create(cls, backend: str, base: str, runs: int) -> Database:
        if backend == "sqlite":
            tmpdir = tempfile.mkdtemp(prefix=f"history-{runs}-")
            path = str(Path(tmpdir) / "stepwise.db")
            return cls(backend, f"sqlite:///{path}", path, tmpdir)
        schema = f"bench_history_{runs}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in base else "?"
        return cls(backend, f"{base}{separator}options={quote(f'-csearch_path={schema}')}",
                   schema)

    def generate(self, runs: int, now: int, analyze: bool) -> dict[str, Any]:
        """Write the history; answers the generation's times and the probes' values."""
        statements = generation_sql("sqlite" if self.backend == "sqlite" else "postgres",
                                    runs, now)
        mid = runs // 2
        began = time.perf_counter()
        probes: dict[str, Any] = {}
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.place, isolation_level=None)
            conn.row_factory = sqlite3.Row
            try:
                # Written once, in one transaction: no rollback journal needed for the load
                # (WAL again afterwards, as stepwise opens it).
                for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=MEMORY",
                               "cache_size=-1000000"):
                    conn.execute(f"PRAGMA {pragma}").fetchall()
                conn.execute("BEGIN")
                for sql in statements:
                    conn.execute(sql)
                probes = self._probes(lambda q: dict(conn.execute(q).fetchall()[0]), mid)
                conn.execute("COMMIT")
                for table in ("d", "g", "fns", "step_defs", "att"):
                    conn.execute(f"DROP TABLE temp.{table}")
                loaded = time.perf_counter()
                conn.execute("PRAGMA journal_mode=WAL").fetchall()
            finally:
                conn.close()
            return {"load_s": round(loaded - began, 2), "analyze_s": 0.0,
                    "generation_s": round(time.perf_counter() - began, 2), "probes": probes}
        with psycopg.connect(self.url, row_factory=dict_row) as pg:
            pg.execute("SET synchronous_commit = off")
            pg.execute("SET work_mem = '256MB'")
            for sql in statements:
                pg.execute(sql)

            def one(query: str) -> dict[str, Any]:
                row = pg.execute(query).fetchone()
                if row is None:
                    raise RuntimeError(f"no row: {query}")
                return row
            probes = self._probes(one, mid)
            pg.commit()
        loaded = time.perf_counter()
        if analyze:
            with psycopg.connect(self.url, autocommit=True) as plain:
                for table in TABLES:
                    plain.execute(f"VACUUM ANALYZE {table}")
        done = time.perf_counter()
        return {"load_s": round(loaded - began, 2), "analyze_s": round(done - loaded, 2),
                "generation_s": round(done - began, 2), "probes": probes}

    @staticmethod
    def _probes(one: Callable[[str], dict[str, Any]], mid: int) -> dict[str, Any]:
        middle = one(PROBES_SQL["middle"].format(mid=mid))
        failed = one(PROBES_SQL["failed"].format(mid=mid))
        user_runs = one(PROBES_SQL["user_runs"].format(uid=middle["uid"]))
        return {"run_id": middle["run_id"], "event_id": middle["event_id"],
                "user_id": int(middle["uid"]), "user_runs": int(user_runs["n"]),
                "failed_run_id": failed["run_id"], "failed_order": int(failed["ord"])}

    def index(self, analyze: bool) -> float | None:
        """Where the code has the search index (`run_terms`, migration 0020), fill it for the
        history written straight into the tables, as an upgraded database is filled: the
        backfill cursor is set and the storage opened (it indexes every run before it
        answers). Answers the seconds it took (None: this code has no index)."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.place, isolation_level=None)
            try:
                has = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'run_terms'"
                                   ).fetchall()
                if has:
                    conn.execute("INSERT INTO settings (name, value) "
                                 "VALUES ('search_backfill_after', '')")
            finally:
                conn.close()
        else:
            with psycopg.connect(self.url, autocommit=True) as pg:
                has = pg.execute("SELECT 1 FROM information_schema.tables WHERE table_schema "
                                 "= %s AND table_name = 'run_terms'", (self.place,)).fetchall()
                if has:
                    pg.execute("INSERT INTO settings (name, value) "
                               "VALUES ('search_backfill_after', '')")
        if not has:
            return None
        began = time.perf_counter()

        async def open_and_close() -> None:
            storage = open_storage(self.url)
            await storage.open()
            await storage.close()
        asyncio.run(open_and_close())
        if analyze and self.backend == "postgres":
            with psycopg.connect(self.url, autocommit=True) as plain:
                plain.execute("VACUUM ANALYZE run_terms")
        return round(time.perf_counter() - began, 2)

    def size(self) -> dict[str, Any]:
        """Bytes of the whole database and of each table (with its indexes)."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.place)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                rows = conn.execute(
                    "SELECT coalesce(m.tbl_name, s.name) AS t, SUM(s.pgsize) FROM dbstat s "
                    "LEFT JOIN sqlite_schema m ON m.name = s.name GROUP BY t").fetchall()
                counts = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                          for t in COUNTED}
            finally:
                conn.close()
            total = os.path.getsize(self.place)
            wal = Path(self.place + "-wal")
            total += wal.stat().st_size if wal.exists() else 0
            tables = {str(t): int(n) for t, n in rows}
        else:
            with psycopg.connect(self.url, autocommit=True) as pg:
                found = pg.execute(
                    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relkind = 'r'", (self.place,)).fetchall()
                counted = pg.execute("SELECT " + ", ".join(
                    f"(SELECT COUNT(*) FROM {t})" for t in COUNTED)).fetchone() or ()
                counts = dict(zip(COUNTED, (int(n) for n in counted), strict=True))
            tables = {str(t): int(n) for t, n in found}
            total = sum(tables.values())
        return {"bytes": total, "tables": dict(sorted(tables.items(), key=lambda kv: -kv[1])),
                "rows": counts}

    def drop(self, base: str) -> None:
        if self.backend == "sqlite":
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            return
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.place} CASCADE")


# --- the measurements --------------------------------------------------------------------

def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def http_operations(probes: dict[str, Any], now: int) -> list[tuple[str, str]]:
    """(name, path) of every HTTP operation measured."""
    def runs(**query: str) -> str:
        return "/api/v1/runs" + ("?" + urlencode(query) if query else "")
    window = now - 15 * DAY_MS
    return [
        ("runs list", runs()),
        ("runs ?function (30% of runs)", runs(function=FUNCTION_IDS[0])),
        ("runs ?function (1% of runs)", runs(function=FUNCTION_IDS[-1])),
        ("runs ?status=failed", runs(status="failed")),
        ("runs ?event_name (3% of runs)", runs(event_name=RARE_NAME)),
        ("runs ?event_data=user.id", runs(event_data=f"user.id={probes['user_id']}")),
        ("runs ?event_id", runs(event_id=probes["event_id"])),
        ("runs ?since=1h ago", runs(since=iso(now - 3_600_000))),
        ("runs ?since&until (1 h, 15 d ago)", runs(since=iso(window),
                                                   until=iso(window + 3_600_000))),
        ("runs ?before=<middle> (paging)", runs(before=probes["run_id"])),
        # The search (q=; where the code has none, FastAPI ignores it: compare with care).
        ("runs ?q=user.id=U", runs(q=f"user.id={probes['user_id']}")),
        ("runs ?q=smtp (an error word, 8%)", runs(q="smtp")),
        ("runs ?q=<order> (an error word, 1 run)", runs(q=str(probes["failed_order"]))),
        ("runs ?q=user.id=U smtp (2 terms)", runs(q=f"user.id={probes['user_id']} smtp")),
        ("runs ?q=<event name> (3%)", runs(q=RARE_NAME)),
        ("runs ?q=<run id prefix>", runs(q=probes["run_id"][:12])),
        ("runs ?status=failed&q=timeout", runs(status="failed", q="timeout")),
        ("runs ?status=failed&event_name (0.2%)", runs(status="failed",
                                                      event_name=RARE_NAME)),
        ("run detail (failed run)", f"/api/v1/runs/{probes['failed_run_id']}"),
        ("events list", "/api/v1/events"),
        ("events ?name (3%)", "/api/v1/events?" + urlencode({"name": RARE_NAME})),
        ("event by id", f"/api/v1/events/{probes['event_id']}"),
        ("functions list", "/api/v1/functions"),
        ("stats/functions (24 h)", "/api/v1/stats/functions"),
        ("stats/functions (week)", "/api/v1/stats/functions?hours=168"),
        ("healthz", "/healthz"),
        ("metrics", "/metrics"),
    ]


def _rows(body: Any) -> int | None:
    """How many items an answer listed (runs, events, functions), for the record."""
    if isinstance(body, dict):
        for key in ("runs", "events", "functions"):
            if isinstance(body.get(key), list):
                return len(body[key])
        if isinstance(body.get("functions"), dict):
            return len(body["functions"])
    return None


async def measure(db: Database, probes: dict[str, Any], now: int, repeat: int
                  ) -> dict[str, dict[str, Any]]:
    """p50 and p95 ms of every operation against `db` (opened as a server opens it)."""
    storage = open_storage(db.url)
    await storage.open()
    engine = Engine(storage)
    api = create_server(storage)
    owner = f"bench-history:{os.getpid()}"
    times: dict[str, list[float]] = {}
    rows: dict[str, int | None] = {}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                     base_url="http://stepwise.test") as client:
            calls: list[tuple[str, Callable[[], Awaitable[int | None]]]] = []
            for name, path in http_operations(probes, now):
                async def get(path: str = path) -> int | None:
                    response = await client.get(path)
                    if response.status_code != 200:
                        raise RuntimeError(f"GET {path}: {response.status_code} "
                                           f"{response.text[:300]}")
                    if response.headers.get("content-type", "").startswith("application/json"):
                        return _rows(response.json())
                    return None
                calls.append((name, get))

            async def lease() -> int | None:
                leases = await engine.lease(APP_ID, FUNCTION_IDS, owner, 1, 60_000)
                if len(leases) != 1:
                    raise RuntimeError(f"Engine.lease took {len(leases)} runs, not 1")
                taken.extend(leases)
                return 1

            async def lease_runs() -> int | None:
                found = await engine.lease_runs(APP_ID, FUNCTION_IDS, owner, 1, 60_000)
                if len(found.leases) != 1:
                    raise RuntimeError(f"Engine.lease_runs took {len(found.leases)} runs, not 1")
                taken.extend(found.leases)
                return 1

            taken: list[Any] = []
            calls += [("lease 1 run (Engine.lease)", lease),
                      ("lease 1 run (Engine.lease_runs)", lease_runs)]
            for round_ in range(WARMUP + repeat):
                for name, call in calls:
                    began = time.perf_counter()
                    found = await call()
                    elapsed = time.perf_counter() - began
                    for held in taken:  # untimed: the run is due again for the next round
                        await engine.release(held, 0)
                    taken.clear()
                    if round_ >= WARMUP:
                        times.setdefault(name, []).append(elapsed * 1000)
                        rows[name] = found
    finally:
        await storage.close()
    return {name: {"p50_ms": round(statistics.median(ms), 3),
                   "p95_ms": round(percentile(ms, 0.95), 3), "rows": rows[name]}
            for name, ms in times.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def roll_up(url: str) -> float | None:
    """Where the code keeps function stats in a rollup (`Engine.roll_up_stats`, which a
    server's retention passes run every minute), bring it up to date as a running server
    would have; answers the seconds it took (None: this code has no rollup)."""
    step: Callable[[], Awaitable[int]] | None = None
    storage = open_storage(url)
    await storage.open()
    try:
        step = getattr(Engine(storage), "roll_up_stats", None)
        if step is None:
            return None
        began = time.perf_counter()
        while await step():
            pass
        return round(time.perf_counter() - began, 2)
    finally:
        await storage.close()


def one_size(backend: str, runs: int, options: argparse.Namespace) -> dict[str, Any]:
    db = Database.create(backend, options.postgres, runs)
    print(f"{backend} {runs:,} runs: {db.url if options.keep else db.place}", flush=True)
    try:
        now = int(time.time() * 1000)
        storage = open_storage(db.url)

        async def register() -> None:
            await storage.open()
            try:
                await Engine(storage).register(APP_ID, definitions())
            finally:
                await storage.close()
        asyncio.run(register())
        generated = db.generate(runs, now, analyze=options.analyze)
        generated["index_s"] = db.index(options.analyze)
        generated["rollup_s"] = asyncio.run(roll_up(db.url))
        size = db.size()
        steps = size["rows"]["steps"]
        rolled = "" if generated["rollup_s"] is None else \
            f", stats rollup {generated['rollup_s']:.1f} s"
        if generated["index_s"] is not None:
            rolled += f", search index {generated['index_s']:.1f} s"
        print(f"  generated in {generated['generation_s']:.1f} s (load {generated['load_s']:.1f}"
              f" s, analyze {generated['analyze_s']:.1f} s{rolled}); "
              f"{size['bytes'] / 1e6:,.1f} MB, "
              f"{size['bytes'] / (runs + QUEUED):,.0f} B/run, "
              f"{size['bytes'] / max(1, steps):,.0f} B/step", flush=True)
        began = time.perf_counter()
        ops = asyncio.run(measure(db, generated["probes"], now, options.repeat))
        print(f"  measured in {time.perf_counter() - began:.1f} s", flush=True)
        return {"runs": runs, "queued": QUEUED, **generated, **size,
                "bytes_per_run": round(size["bytes"] / (runs + QUEUED), 1),
                "bytes_per_step": round(size["bytes"] / max(1, steps), 1), "ops": ops}
    finally:
        if not options.keep:
            db.drop(options.postgres)


def table(backend: str, sizes: list[int], figures: dict[int, dict[str, Any]]
          ) -> tuple[list[str], dict[str, Any]]:
    """The printed table of one backend, and each operation's verdict."""
    small, large = sizes[0], sizes[-1]
    names = list(figures[small]["ops"])
    width = max(len(n) for n in names) + 2
    heads = "".join(f"{f'p50 (p95) ms @ {s:,}':>27}" for s in sizes)
    lines = [f"{backend}:", f"  {'operation':<{width}}{heads}{'ratio':>9}  verdict"]
    verdicts: dict[str, Any] = {}
    for name in names:
        cells = ""
        for s in sizes:
            op = figures[s]["ops"][name]
            cells += f"{op['p50_ms']:>17.2f} ({op['p95_ms']:>7.2f})"
        ratio = figures[large]["ops"][name]["p50_ms"] / max(1e-6,
                                                            figures[small]["ops"][name]["p50_ms"])
        verdict = "OK" if ratio <= SLOW_RATIO else "SLOW"
        verdicts[name] = {"ratio": round(ratio, 2), "verdict": verdict}
        lines.append(f"  {name:<{width}}{cells}{ratio:>8.1f}x  {verdict}")
    for label, key, fmt in [("database MB", "bytes", "{:,.1f}"), ("bytes per run", "bytes_per_run",
                                                                  "{:,.0f}"),
                            ("bytes per step", "bytes_per_step", "{:,.0f}"),
                            ("generation s", "generation_s", "{:,.1f}")]:
        cells = "".join(f"{fmt.format(figures[s][key] / (1e6 if key == 'bytes' else 1)):>27}"
                        for s in sizes)
        lines.append(f"  {label:<{width}}{cells}")
    return lines, verdicts


def git_rev() -> str | None:
    """The commit measured: this repository's, when stepwise comes from its src/ (marked when
    src/ has changes); None when it comes from elsewhere (PYTHONPATH=<a tree>/src: see
    `stepwise_from` and --label)."""
    if not Path(stepwise.__file__).resolve().is_relative_to(ROOT / "src"):
        return None
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + (" (src modified)" if dirty else "") \
        if done.returncode == 0 else None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--sizes", default="10000,1000000",
                        help="finished runs in each database, comma-separated")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    parser.add_argument("--label", help="a note recorded with the figures (e.g. which tree)")
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL database URL")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases (their locations are printed and recorded)")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false",
                        help="PostgreSQL: no VACUUM ANALYZE after the load")
    options = parser.parse_args(argv)
    try:
        options.size_list = sorted({int(s.replace("_", "")) for s in options.sizes.split(",")})
    except ValueError:
        parser.error(f"--sizes {options.sizes!r}: comma-separated numbers of runs")
    if len(options.size_list) < 2 or options.size_list[0] < 100:
        parser.error("--sizes: at least two sizes, each at least 100")
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    return options


def main(options: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgres"] if options.backend == "both" else [options.backend]
    began = time.monotonic()
    load = os.getloadavg()[0]  # recorded: other work on the machine skews every figure
    figures: dict[str, Any] = {
        "bench": "history", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sizes": options.size_list, "repeat": options.repeat, "warmup": WARMUP,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "git": git_rev(),
        "stepwise_from": str(Path(stepwise.__file__).resolve().parent), "label": options.label,
        "analyze": options.analyze,
        "slow_ratio": SLOW_RATIO, "backends": {}}
    tables: list[str] = []
    for backend in backends:
        if backend == "postgres":
            with psycopg.connect(options.postgres) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                figures["postgres"] = row[0] if row else None
        sized = {runs: one_size(backend, runs, options) for runs in options.size_list}
        lines, verdicts = table(backend, options.size_list, sized)
        tables += ["", *lines]
        figures["backends"][backend] = {"sizes": {str(k): v for k, v in sized.items()},
                                        "verdicts": verdicts,
                                        "slow": [n for n, v in verdicts.items()
                                                 if v["verdict"] == "SLOW"]}
    figures["loadavg_1m"] = {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}
    figures["total_seconds"] = round(time.monotonic() - began, 1)
    print("\n".join(tables), flush=True)
    return figures


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    result = main(options)
    line = json.dumps(result)
    print(line)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(line + "\n")
