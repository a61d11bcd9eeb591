"""SQLite backend: WAL, one writer thread that commits concurrent writes together.

Every write goes through a single thread and connection. The thread takes every operation
waiting in its queue, runs each in a savepoint of one transaction and commits once, so
concurrent event requests and steps share one fsync (group commit). Reads use per-thread
connections and never wait for the writer (WAL snapshots).
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import sqlite3
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from . import queries, search
from .base import Storage, StorageUnavailable, resolve_future
from .schema import apply_migrations

T = TypeVar("T")
DEFAULT_PATH = ".stepwise/stepwise.db"
BATCH_MAX = 512


def path_from_url(url: str | None) -> str:
    if not url:
        return DEFAULT_PATH
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") - 1:] if url.startswith("sqlite:////") else url[10:]
    if url.startswith("sqlite://"):
        return url[9:] or DEFAULT_PATH
    if "://" in url:
        raise ValueError(f"unsupported database URL {url!r}: use a path, sqlite:///path or "
                         "postgresql://...")
    return url


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


class _Tx:
    round_trips = False  # in process: a statement costs no round trip

    def __init__(self, conn: sqlite3.Connection, sql: dict[str, str]) -> None:
        self.conn = conn
        self.sql = sql
        self.woke = False  # a statement made work due (`queries.wakes`)
        self.wakes = queries.wakes()

    def text(self, query: str, /) -> str:
        return self.sql[query]

    def one(self, query: str, /, **params: Any) -> dict[str, Any] | None:
        rows = self._rows(query, params)
        return rows[0] if rows else None

    def all(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        return self._rows(query, params)

    def exec(self, query: str, /, **params: Any) -> int:
        if query in self.wakes and queries.woke(self.wakes[query], params, None):
            self.woke = True
        return self.conn.execute(self.sql[query], _bind(params)).rowcount

    def defer(self, query: str, /, **params: Any) -> None:
        self._rows(query, params)  # in process: nothing to save by waiting

    def raw_all(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, _bind(params)).fetchall()]

    def each(self, calls: list[tuple[str, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return [self._rows(query, params) for query, params in calls]

    def commit_with(self, calls: list[tuple[str, dict[str, Any]]]
                    ) -> list[list[dict[str, Any]]]:
        return self.each(calls)  # no round trips to save: the operation stays one transaction

    def written(self, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """A statement's first row, or for one that answers none (no RETURNING) `{"written":
        n}` when its first statement wrote n > 0 rows: `write_statement` on SQLite."""
        rows, written = self._run(query, params)
        if rows:
            return rows[0]
        return {"written": written} if written > 0 else None

    def _rows(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._run(query, params)[0]

    def _run(self, query: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """A named query's rows and how many rows its first statement wrote; a query of
        several statements (one PostgreSQL statement of data-modifying CTEs, spelled out for
        SQLite) runs them in order and answers the first one's."""
        statements = _statements(self.sql[query])
        bound = _bind(params)
        # fetchall: an UPDATE ... RETURNING runs to its end before the next statement.
        cursor = self.conn.execute(statements[0], bound)
        rows = [dict(r) for r in cursor.fetchall()]
        written = cursor.rowcount
        for statement in statements[1:]:
            self.conn.execute(statement, bound)
        if query in self.wakes and queries.woke(self.wakes[query], params, rows):
            self.woke = True
        return rows, written


def _bind(params: dict[str, Any]) -> dict[str, Any]:
    """A list parameter (run ids, function ids) as the JSON array the queries read with
    json_each; PostgreSQL binds the list as an array."""
    for value in params.values():
        if type(value) is list:
            return {k: json.dumps(v) if type(v) is list else v for k, v in params.items()}
    return params


@cache
def _statements(sql: str) -> list[str]:
    return [s for s in (part.strip() for part in _STATEMENT_END.split(sql)) if s]


_STATEMENT_END = re.compile(r";\s*\n")


_Item = tuple[Callable[..., Any], tuple[Any, ...], bool, asyncio.AbstractEventLoop,
              "asyncio.Future[Any]"]


class SQLiteStorage(Storage):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.sql = queries.load("sqlite")
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._lock = threading.Lock()  # held by whoever uses the write connection
        self._conn: sqlite3.Connection | None = None
        self._tx: _Tx | None = None
        self._synchronous_full = True
        self.commits = 0  # how many transactions the writer committed (group commit shows here)

    async def open(self) -> None:
        if self._thread is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        migrate(conn)
        search.backfill(lambda name, params: [dict(r) for r in conn.execute(
                            self.sql[name], _bind(params)).fetchall()],
                        begin=lambda: conn.execute("BEGIN IMMEDIATE"),
                        commit=lambda: conn.execute("COMMIT"),
                        rollback=lambda: conn.execute("ROLLBACK"))
        self._conn, self._tx = conn, _Tx(conn, self.sql)
        self._synchronous_full = True
        self._thread = threading.Thread(target=self._write_loop,
                                        name="stepwise-sqlite-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._tx = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()

    async def write(self, op: Callable[..., T], *args: Any, durable: bool = True,
                    inline: bool = False, one_statement: bool = False) -> T:
        # one_statement changes nothing here: a transaction costs no round trip.
        if self._thread is None:
            raise RuntimeError("storage is not open")
        if inline and self._queue.empty() and self._lock.acquire(blocking=False):
            # Nobody else is writing: commit on this thread and skip two thread hops.
            try:
                ok, value = self._run_batch([(op, args, durable)])[0]
            finally:
                self._lock.release()
            if ok:
                return value  # type: ignore[no-any-return]
            raise value
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, args, durable, loop, fut))
        return await fut

    async def write_statement(self, query: str, params: dict[str, Any], *,
                              inline: bool = False) -> dict[str, Any] | None:
        return await self.write(_written, query, params, inline=inline)

    async def read(self, op: Callable[..., T], *args: Any, snapshot: bool = True) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return op(_Tx(conn, self.sql), *args)

    # --- the writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            stop = False
            with self._lock:  # drain once the connection is ours: all that queued meanwhile
                batch = [first]
                while len(batch) < BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                results = self._run_batch([(op, args, durable)
                                           for op, args, durable, _, _ in batch])
            # One wake-up per event loop for the whole batch, not one per caller: each
            # call_soon_threadsafe writes to the loop's self-pipe and wakes it.
            answers: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
            for (ok, value), (_op, _args, _d, loop, fut) in zip(results, batch, strict=True):
                answers.setdefault(loop, []).append((fut, ok, value))
            for loop, answered in answers.items():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_resolve_all, answered)
            if stop:
                return

    def _run_batch(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], bool]]
                   ) -> list[tuple[bool, Any]]:
        """Run the calls in one transaction (a savepoint each) and commit once. Hold `_lock`."""
        conn, tx = self._conn, self._tx
        assert conn is not None and tx is not None
        durable = any(call[2] for call in calls)
        if durable != self._synchronous_full:
            conn.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
            self._synchronous_full = durable
        results: list[tuple[bool, Any]] = []
        single = len(calls) == 1
        woke = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, args, _durable in calls:
                if not single:
                    conn.execute("SAVEPOINT op")
                tx.woke = False
                try:
                    results.append((True, op(tx, *args)))
                    woke = woke or tx.woke  # kept only if this operation commits
                    if not single:
                        conn.execute("RELEASE op")
                except BaseException as exc:  # ExecutionStopped signals roll back too
                    if single:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    results.append((False, exc))
            if conn.in_transaction:
                conn.execute("COMMIT")
            self.commits += 1
        except BaseException as exc:  # the transaction itself failed: every operation fails
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _unavailable(exc):
                exc = StorageUnavailable(f"SQLite cannot write now: {exc}")
            return [(False, exc)] * len(calls)
        if woke:
            self.notify_new_work()
        return results


def _written(tx: _Tx, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    return tx.written(query, params)


def _resolve_all(answered: list[tuple[Any, bool, Any]]) -> None:
    for fut, ok, value in answered:
        resolve_future(fut, ok, value)


def _unavailable(exc: sqlite3.OperationalError) -> bool:
    """Locked by another process, or the disk failing or full: not a bug in a statement."""
    text = str(exc).lower()
    return any(word in text for word in ("locked", "busy", "disk", "full", "unable to open",
                                          "readonly"))


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending versioned migrations in one immediate transaction; return the version."""
    return apply_migrations(
        dialect="sqlite",
        begin=lambda: conn.execute("BEGIN IMMEDIATE"),
        execute=lambda sql: conn.execute(sql),
        applied=lambda: {r[0] for r in conn.execute("SELECT version FROM schema_migrations")},
        record=lambda v: conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%s','now'))",
            (v,)),
        commit=lambda: conn.execute("COMMIT"),
    )
