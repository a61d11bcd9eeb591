"""PostgreSQL backend: a psycopg 3 pool, SKIP LOCKED leases, LISTEN/NOTIFY wake-ups.

The engine's operations are plain functions over a transaction; here each runs in a pooled
connection on a small thread pool, so one operation is one PostgreSQL transaction. An
operation that makes work due (a statement marked `-- wakes` in queries.sql) sends a NOTIFY
in the same transaction,
delivered on commit; every process LISTENs and wakes its workers at once. Polling remains as
a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from . import queries, search
from .base import Storage, StorageUnavailable, redact_url, resolve_future
from .schema import apply_migrations

T = TypeVar("T")
log = logging.getLogger("stepwise.storage")
MIGRATION_LOCK = "stepwise.migrations"
#: How long an operation waits for a pooled connection before reporting the database
#: unavailable (an HTTP request then answers 503 instead of hanging).
POOL_WAIT_S = 5.0
#: How long the pool retries one lost connection before it gives up on that attempt; the
#: next request that waits for a connection then starts a new one at once. psycopg_pool
#: doubles the wait between attempts without a cap (1, 2, 4, 8, 16, 32 s...) until this
#: timeout (5 min by default): after a 20 s outage the first request succeeded 8 to 11 s
#: after PostgreSQL was back, after 40 s 21 s, each waiting POOL_WAIT_S and answering 503
#: meanwhile (tests/chaos/test_pg_faults.py). Giving up after 5 s keeps attempts at most
#: about 2 s apart.
RECONNECT_S = 5.0
#: Statements of `write_statement` sent in one round trip at most.
GROUP_MAX = 64

#: A statement of `write_statement` waiting to be sent: its SQL, parameters and answer.
_Statement = tuple[str, dict[str, Any], asyncio.AbstractEventLoop,
                   "asyncio.Future[dict[str, Any] | None]"]


class _Tx:
    """`prelude`: statements that open the transaction (BEGIN, SET LOCAL), sent in one round
    trip with the operation's first statement instead of one round trip each; `deferred`:
    writes (`defer`) waiting to go out with the next statement or the COMMIT."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], sql: dict[str, str],
                 prelude: tuple[str, ...] = (), notify: str | None = None) -> None:
        self.conn = conn
        self.sql = sql
        self.notify = notify  # the NOTIFY that wakes every process's workers
        self.woke = False  # the open transaction made work due
        self.woke_before = False  # an earlier transaction of the operation did (commit_with)
        self.prelude = prelude
        self.began = False  # the prelude was sent: there is a transaction to end
        self.deferred: list[tuple[str, dict[str, Any]]] = []
        self.round_trips = bool(prelude)  # autocommit: one statement per operation anyway
        self.wakes = queries.wakes()

    def _ran(self, query: str, params: dict[str, Any],
             rows: list[dict[str, Any]] | None = None) -> None:
        """Note whether `query` made work due (`queries.wakes`)."""
        if query in self.wakes and queries.woke(self.wakes[query], params, rows):
            self.woke = True

    def text(self, query: str, /) -> str:
        return queries.load_raw("postgres")[query]  # raw_all converts the composed whole

    def _open(self) -> None:
        """Queue the prelude, once, and the deferred writes (the caller is in pipeline mode:
        they go with what follows)."""
        if not self.began and self.prelude:
            self.began = True
            for statement in self.prelude:
                self.conn.execute(statement)
        if self.deferred:
            for sql, params in self.deferred:
                self.conn.execute(sql, params)
            self.deferred.clear()

    def _execute(self, sql: str, params: dict[str, Any]) -> psycopg.Cursor[dict[str, Any]]:
        if (self.began or not self.prelude) and not self.deferred:
            return self.conn.execute(sql, params)
        with self.conn.pipeline():
            self._open()
            cursor = self.conn.execute(sql, params)
        return cursor

    def one(self, query: str, /, **params: Any) -> dict[str, Any] | None:
        row = self._execute(self.sql[query], params).fetchone()
        self._ran(query, params, None if row is None else [row])
        return row

    def all(self, query: str, /, **params: Any) -> list[dict[str, Any]]:
        rows = self._execute(self.sql[query], params).fetchall()
        self._ran(query, params, rows)
        return rows

    def exec(self, query: str, /, **params: Any) -> int:
        count = self._execute(self.sql[query], params).rowcount
        self._ran(query, params)
        return count

    def defer(self, query: str, /, **params: Any) -> None:
        self._ran(query, params)  # a rule of a parameter, or always: known before it runs
        self.deferred.append((self.sql[query], params))

    def raw_all(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._execute(queries.to_pyformat(sql), params).fetchall()

    def each(self, calls: list[tuple[str, dict[str, Any]]],
             closing: tuple[str, ...] = ()) -> list[list[dict[str, Any]]]:
        """Independent statements in one round trip (psycopg's pipeline mode), and then the
        `closing` ones."""
        with self.conn.pipeline():
            self._open()
            cursors = [self.conn.cursor() for _ in calls]
            for cursor, (query, params) in zip(cursors, calls, strict=True):
                cursor.execute(self.sql[query], params)
            for statement in closing:
                self.conn.execute(statement)
        rows = [cursor.fetchall() if cursor.description else [] for cursor in cursors]
        for (query, params), answered in zip(calls, rows, strict=True):
            self._ran(query, params, answered)
        return rows

    def commit_with(self, calls: list[tuple[str, dict[str, Any]]]
                    ) -> list[list[dict[str, Any]]]:
        if not self.prelude:  # no transaction (autocommit): each statement commits itself
            return self.each(calls)
        for query, params in calls:  # what they wake is known before they run
            if self.wakes.get(query) != queries.ANSWERED:
                self._ran(query, params)
        notify = (self.notify,) if self.woke and self.notify else ()
        rows = self.each(calls, (*notify, "COMMIT"))
        self.began = False  # a statement after this opens a new transaction
        if self.woke and not notify and self.notify:  # woken by an answer, after the COMMIT
            self.conn.execute(self.notify)
        self.woke_before, self.woke = self.woke_before or self.woke, False
        return rows

    @property
    def pending(self) -> bool:
        """Something was sent or waits to be: there is a transaction to end."""
        return self.began or bool(self.deferred)

    def end(self, statements: list[str]) -> None:
        """Send the deferred writes and the closing statements (a NOTIFY, COMMIT) in one
        round trip."""
        with self.conn.pipeline():
            self._open()
            for statement in statements:
                self.conn.execute(statement)


class PostgresStorage(Storage):
    dialect = "postgres"

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        super().__init__()
        self.url = url
        self.sql = queries.load("postgres")
        self.max_connections = max_connections
        self.pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._channel = "stepwise_work"
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Statements of `write_statement` waiting, and whether a thread of the executor is
        # sending them (it takes what queued meanwhile before it stops).
        self._waiting: list[_Statement] = []
        self._sending = False
        self._waiting_lock = threading.Lock()
        self.grouped_commits = 0  # commits that carried more than one statement

    async def open(self) -> None:
        if self.pool is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=self.max_connections,
                                            thread_name_prefix="stepwise-pg")
        pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            self.url, min_size=1, max_size=self.max_connections, open=False,
            kwargs={"row_factory": dict_row, "autocommit": True, "connect_timeout": 5},
            configure=_configure, name="stepwise", timeout=POOL_WAIT_S,
            reconnect_timeout=RECONNECT_S)
        try:
            # One plain connection first: its error names the cause (refused, no such
            # database, authentication), where the pool would only say it timed out.
            await self._loop.run_in_executor(self._executor, self._probe)
            await self._loop.run_in_executor(self._executor, lambda: pool.open(wait=True,
                                                                               timeout=10))
        except Exception as exc:
            self._executor.shutdown(wait=False)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConnectionError(f"cannot connect to PostgreSQL at {redact_url(self.url)}: "
                                  f"{reason}") from None
        self.pool = pool
        schema = await self._loop.run_in_executor(self._executor, self._migrate)
        self._channel = f"stepwise_work_{schema}"[:63]
        self._stop.clear()
        self._listener = threading.Thread(target=self._listen, name="stepwise-pg-listen",
                                          daemon=True)
        self._listener.start()

    async def close(self) -> None:
        if self.pool is None:
            return
        self._stop.set()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, 5)
        await asyncio.to_thread(self.pool.close)
        self.pool = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def write(self, op: Callable[..., T], *args: Any, durable: bool = True,
                    inline: bool = False, one_statement: bool = False) -> T:
        return await self._run(op, args, durable, True, one_statement)

    async def read(self, op: Callable[..., T], *args: Any, snapshot: bool = True) -> T:
        return await self._run(op, args, True, False, one_statement=not snapshot)

    # --- one-statement writes, sent together (every step's result) ------------------------
    # Alone, such a statement commits itself in one round trip. Those that arrive while
    # others are on their way wait, then go in one pipeline and one transaction: one round
    # trip, one commit (a WAL flush) and one thread hop for them all instead of one each, as
    # concurrent runs' steps usually do. Each answers once the transaction committed; when a
    # statement fails the group rolls back and each is sent alone, so one bad write never
    # takes the others with it. A statement whose row answers a true `wake` made work due:
    # every process's workers are woken once it committed.

    async def write_statement(self, query: str, params: dict[str, Any], *,
                              inline: bool = False) -> dict[str, Any] | None:
        if self.pool is None or self._executor is None:
            raise RuntimeError("storage is not open")
        sql = self.sql[query]
        loop = asyncio.get_running_loop()
        with self._waiting_lock:
            start, self._sending = not self._sending, True
            alone = inline and start  # nobody is sending: send it from here
            if not alone:
                fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
                self._waiting.append((sql, params, loop, fut))
        if alone:
            return self._send_alone(sql, params)
        if start:
            self._executor.submit(self._send_waiting)
        with _unavailable_as_503():
            return await fut

    def _send_alone(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """`write_statement` for a caller alone on its loop (`inline`): sent on its thread,
        without the two thread hops; statements that queued meanwhile go to a sender."""
        try:
            with _unavailable_as_503():
                ((ok, value),) = self._send([(sql, params)])
            if not ok:
                raise value
            return cast(dict[str, Any] | None, value)
        finally:
            with self._waiting_lock:
                more = bool(self._waiting)
                self._sending = more
            if more and self._executor is not None:
                self._executor.submit(self._send_waiting)

    def _send_waiting(self) -> None:
        while True:
            with self._waiting_lock:
                group = self._waiting[:GROUP_MAX]
                del self._waiting[:GROUP_MAX]
                if not group:
                    self._sending = False
                    return
            try:
                answers = self._send([(sql, params) for sql, params, _loop, _fut in group])
            except BaseException as exc:  # never leave a writer waiting for an answer
                answers = [(False, exc)] * len(group)
            for (_sql, _params, loop, fut), (ok, value) in zip(group, answers, strict=True):
                if not loop.is_closed():
                    loop.call_soon_threadsafe(resolve_future, fut, ok, value)

    def _send(self, group: list[tuple[str, dict[str, Any]]]) -> list[tuple[bool, Any]]:
        """Commit `group` (together, or each alone when one fails) and answer each one's
        first row or error; wake every worker once when a committed row answered `wake`."""
        assert self.pool is not None
        with self.pool.connection() as conn:
            answers = self._commit(conn, group)
            if any(ok and value is not None and value.get("wake") for ok, value in answers):
                self.notify_new_work()
                try:  # committed already: a lost NOTIFY only leaves others to their poll
                    conn.execute(f"NOTIFY {self._channel}")
                except psycopg.Error as exc:
                    log.warning("NOTIFY after a commit failed (%s); other processes poll", exc)
            return answers

    def _commit(self, conn: psycopg.Connection[dict[str, Any]],
                group: list[tuple[str, dict[str, Any]]]) -> list[tuple[bool, Any]]:
        if len(group) > 1:
            cursors = [conn.cursor() for _ in group]
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    for cursor, (sql, params) in zip(cursors, group, strict=True):
                        cursor.execute(sql, params)
                    conn.execute("COMMIT")
                self.grouped_commits += 1
                return [(True, cursor.fetchone()) for cursor in cursors]
            except psycopg.Error:
                if conn.closed:
                    raise
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
        answers: list[tuple[bool, Any]] = []
        for sql, params in group:  # alone: each commits itself
            try:
                answers.append((True, conn.execute(sql, params).fetchone()))
            except psycopg.Error as exc:
                if conn.closed:
                    raise
                answers.append((False, exc))
        return answers

    async def _run(self, op: Callable[..., T], args: tuple[Any, ...], durable: bool,
                   write: bool, one_statement: bool = False) -> T:
        if self.pool is None or self._executor is None:
            raise RuntimeError("storage is not open")
        loop = asyncio.get_running_loop()
        with _unavailable_as_503():
            if one_statement:
                return await loop.run_in_executor(self._executor, self._autocommit, op, args)
            return await loop.run_in_executor(self._executor, self._transaction, op, args,
                                              durable, write)

    def _transaction(self, op: Callable[..., T], args: tuple[Any, ...], durable: bool,
                     write: bool) -> T:
        assert self.pool is not None
        with self.pool.connection() as conn:
            notify = [f"NOTIFY {self._channel}"] if write else []  # delivered on commit
            tx = _Tx(conn, self.sql, _BEGIN if durable else _BEGIN_NOT_DURABLE,
                     notify[0] if notify else None)
            try:
                result = op(tx, *args)
                if tx.pending:
                    tx.end([*notify, "COMMIT"] if tx.woke else ["COMMIT"])
                elif tx.woke and notify:  # nothing written, yet someone asked for a wake
                    tx.end(notify)
            except BaseException:
                if tx.began and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            if write and (tx.woke or tx.woke_before):
                self.notify_new_work()  # this process's workers need not wait for the NOTIFY
            return result

    def _autocommit(self, op: Callable[..., T], args: tuple[Any, ...]) -> T:
        """`op` writes with one statement: no BEGIN and COMMIT, which would cost a round trip
        each (the connections are in autocommit mode: the statement commits itself)."""
        assert self.pool is not None
        with self.pool.connection() as conn:
            tx = _Tx(conn, self.sql)
            result = op(tx, *args)
            if tx.deferred:  # no transaction holds them together: the promise was broken
                raise RuntimeError(f"{op.__name__}: deferred writes in a one-statement "
                                   "operation")
            if tx.woke:
                conn.execute(f"NOTIFY {self._channel}")
        if tx.woke:
            self.notify_new_work()
        return result

    def _probe(self) -> None:
        with psycopg.connect(self.url, connect_timeout=5):
            pass

    def _migrate(self) -> str:
        assert self.pool is not None
        with self.pool.connection() as conn:
            schema = conn.execute("SELECT current_schema() AS s").fetchone()
            if schema is None or schema["s"] is None:
                raise RuntimeError("PostgreSQL has no current schema (check search_path)")
            name = str(schema["s"])
            apply_migrations(
                dialect="postgres",
                begin=lambda: (conn.execute("BEGIN"), conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{name}.{MIGRATION_LOCK}",))),
                execute=lambda sql: conn.execute(sql),
                applied=lambda: {r["version"] for r in conn.execute(
                    "SELECT version FROM schema_migrations").fetchall()},
                record=lambda v: conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) "
                    "VALUES (%s, (extract(epoch from now()) * 1000)::bigint)", (v,)),
                commit=lambda: conn.execute("COMMIT"),
            )

            def fetch(query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
                cursor = conn.execute(self.sql[query], params)
                return cursor.fetchall() if cursor.description else []
            search.backfill(fetch, begin=lambda: conn.execute("BEGIN"),
                            commit=lambda: conn.execute("COMMIT"),
                            rollback=lambda: conn.execute("ROLLBACK"))
        return name

    def _listen(self) -> None:
        """Forward NOTIFYs to the workers of this process; reconnect when the link drops."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.notify_new_work()
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
                self._stop.wait(1.0)



_BEGIN = ("BEGIN",)
_BEGIN_NOT_DURABLE = ("BEGIN", "SET LOCAL synchronous_commit = off")


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Every pooled connection prefers an index to a sequential scan. Each statement the
    engine runs has an index to use, but psycopg prepares a statement run five times and
    PostgreSQL then keeps its generic plan: one made while the tables were empty (a worker
    polling a new database before work arrives) scans the whole table, and goes on doing so
    as it grows until an ANALYZE invalidates the plan (never, with autovacuum off). Measured
    in `bench/peers.py`: every lease read all of runs, events, queue and steps (12M rows of
    runs read for 8,000 jobs). A statement with no usable index still scans."""
    conn.execute("SET enable_seqscan = off")


@contextlib.contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """No pooled connection in time, or a lost one: `StorageUnavailable` (callers answer 503
    and try again later)."""
    try:
        yield
    except PoolTimeout:
        raise StorageUnavailable(
            f"no PostgreSQL connection within {POOL_WAIT_S:g} s (database down or "
            "overloaded)") from None
    except psycopg.OperationalError as exc:
        if _connection_lost(exc):
            raise StorageUnavailable(f"PostgreSQL unavailable: {exc}") from None
        raise


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """A lost or refused connection or a shutting-down server, as opposed to a failed
    statement (SQLSTATE class 08 and 57P0x, or no SQLSTATE at all)."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state.startswith("57P0")
