"""The storage interface: run a domain operation in a transaction, and wake workers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import ops

P = ParamSpec("P")
T = TypeVar("T")


class Storage(ABC):
    """One small interface, two backends (SQLite, PostgreSQL).

    Backends only run operations from `ops` in transactions; all engine SQL lives in
    `sql/queries.sql` and all transaction logic in `ops`.
    """

    dialect: str = ""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def write(self, op: Callable[..., T], *args: Any, durable: bool = True,
                    inline: bool = False) -> T:
        """Run `op(tx, *args)` in a write transaction; when `durable`, return only once synced.

        `inline` is a hint from a caller that is alone on its event loop (one run executing):
        it would rather block briefly than pay a thread hop. Backends may ignore it.
        """

    @abstractmethod
    async def read(self, op: Callable[..., T], *args: Any) -> T:
        """Run `op(tx, *args)` against a consistent snapshot."""

    def on_new_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) when runs may have become available."""
        self._listeners.append(callback)

    def notify_new_work(self) -> None:
        for callback in self._listeners:
            callback()

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Convenience wrappers used by the server and the CLI.
    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self.read(ops.get_run, run_id)

    async def list_runs(self, filters: dict[str, Any], limit: int = 50) -> list[dict[str, Any]]:
        return await self.read(ops.list_runs, filters, limit)


def open_storage(url: str | None = None) -> Storage:
    """Pick the backend from the URL: `postgresql://...`, or SQLite (a path or `sqlite:///path`)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStorage
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "PostgreSQL support needs psycopg: pip install 'stepwise[postgres]'") from exc
        return PostgresStorage(url)
    from .sqlite import SQLiteStorage, path_from_url

    return SQLiteStorage(path_from_url(url))
