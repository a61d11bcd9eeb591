"""Storage backends behind one interface; `open_storage(url)` picks one.

The package gathers what the engine uses: the interface (`base`) and the backends, which
implement it (the interface knows no backend).
"""

from __future__ import annotations

from .base import Storage, StorageUnavailable, Tx

__all__ = ["Storage", "StorageUnavailable", "Tx", "open_storage"]


def open_storage(url: str | None = None) -> Storage:
    """Pick the backend from the URL: `postgresql://...`, or SQLite (a path or `sqlite:///path`)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStorage
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("PostgreSQL support needs psycopg: "
                               "pip install 'stepwise-engine[postgres]'") from exc
        return PostgresStorage(url)
    from .sqlite import SQLiteStorage, path_from_url

    return SQLiteStorage(path_from_url(url))
