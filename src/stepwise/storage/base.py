"""The storage interface: run a function over a transaction, and wake workers after commits.

A transaction wakes every worker once it commits when one of its statements made work due:
which ones do is said beside their SQL (`queries.wakes`), so wake-ups follow from what is
written, on both backends, instead of from calls the engine must remember.

Storage knows tables and SQL, not the engine: the engine's operations are plain functions
`op(tx, *args)` that it hands to `write` or `read`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def resolve_future(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Answer a caller waiting on another thread's work (unless it gave up waiting)."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class StorageUnavailable(Exception):
    """The database cannot be reached or cannot write now (down, locked, disk full). Callers
    answer 503 and try again later; nothing was written."""


class Tx(Protocol):
    """One open transaction: run named queries (`sql/queries.sql`) with `:name` parameters.
    A list parameter is a list of strings (ids): an array on PostgreSQL, JSON on SQLite."""

    #: Statements cost a round trip each unless sent together (PostgreSQL, in a
    #: transaction): an operation may then prefer one larger statement to several.
    round_trips: bool

    def one(self, query: str, /, **params: Any) -> dict[str, Any] | None: ...
    def all(self, query: str, /, **params: Any) -> list[dict[str, Any]]: ...
    def exec(self, query: str, /, **params: Any) -> int: ...
    def defer(self, query: str, /, **params: Any) -> None:
        """A write whose result nobody reads, run before the transaction's next statement or
        its commit, whichever comes first: PostgreSQL sends it with that one instead of in a
        round trip of its own. Its error, if any, surfaces there (and rolls back the whole)."""
        ...
    def raw_all(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...
    def each(self, calls: list[tuple[str, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Run statements that do not depend on each other's results, in order, and return
        each one's rows (none for a write without RETURNING); PostgreSQL sends them in one
        round trip."""
        ...
    def commit_with(self, calls: list[tuple[str, dict[str, Any]]]
                    ) -> list[list[dict[str, Any]]]:
        """`each`, and commit what the transaction wrote so far with them (PostgreSQL: in the
        same round trip). Whatever the operation runs next is a transaction of its own. For
        an operation whose last statements are known before their answers: one round trip
        fewer. SQLite keeps the whole operation one transaction."""
        ...
    def text(self, query: str, /) -> str:
        """The SQL of a named query or fragment, in this backend's dialect (to compose)."""
        ...


class Storage(ABC):
    """One small interface, two backends (SQLite, PostgreSQL)."""

    dialect: str = ""

    def __init__(self) -> None:
        self._listeners: list[tuple[asyncio.AbstractEventLoop | None, Callable[[], None]]] = []

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def write(self, op: Callable[..., T], *args: Any, durable: bool = True,
                    inline: bool = False, one_statement: bool = False) -> T:
        """Run `op(tx, *args)` in a write transaction; when `durable`, return only once synced.

        `inline` is a hint from a caller that is alone on its event loop (one run executing):
        it would rather block briefly than pay a thread hop. `one_statement` promises that
        `op` writes with at most one statement (the rest only reads, or repeats a write that
        is safe on its own): a backend may then skip BEGIN and COMMIT, each a round trip.
        Backends may ignore both.
        """

    async def write_statement(self, query: str, params: dict[str, Any], *,
                              inline: bool = False) -> dict[str, Any] | None:
        """Run one named statement that writes, committed durably on its own, and answer its
        first row (SQLite: or, for a statement without RETURNING, `{"written": n}` when it
        wrote n > 0 rows, else None). PostgreSQL sends the ones that arrive together in one
        round trip and one commit (every step's result takes this path). A statement that
        makes work due (`queries.wakes`) wakes the workers once it committed."""
        return await self.write(_first_row, query, params, inline=inline, one_statement=True)

    @abstractmethod
    async def read(self, op: Callable[..., T], *args: Any, snapshot: bool = True) -> T:
        """Run `op(tx, *args)` against a consistent snapshot; without `snapshot`, each of its
        statements may see its own (PostgreSQL then skips BEGIN and COMMIT)."""

    def on_new_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the caller's event loop when runs may have become available."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._listeners.append((loop, callback))

    def notify_new_work(self) -> None:
        """Wake this process's workers; safe to call from any thread."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, callback in self._listeners:
            if loop is None or loop is current:
                callback()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(callback)

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _first_row(tx: Tx, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    return tx.one(query, **params)
