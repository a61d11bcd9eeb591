"""Where the pipeline keeps its results: transcript segments, chunk embeddings, failures and
notifications, in SQLite (a path) or PostgreSQL (a postgresql:// URL) named by MEDIA_DB.

Every write replaces what a media id had, in one transaction, so a retried step never stores
twice."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS media_segments (media_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "start_s REAL NOT NULL, end_s REAL NOT NULL, text TEXT NOT NULL, "
    "PRIMARY KEY (media_id, seq))",
    "CREATE TABLE IF NOT EXISTS media_chunks (media_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "text TEXT NOT NULL, embedder TEXT NOT NULL, vector TEXT NOT NULL, "
    "PRIMARY KEY (media_id, seq))",
    "CREATE TABLE IF NOT EXISTS media_failures (media_id TEXT NOT NULL, error TEXT NOT NULL, "
    "at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS media_notifications (media_id TEXT PRIMARY KEY, "
    "user_id TEXT NOT NULL, message TEXT NOT NULL)",
]


def url() -> str:
    return os.environ.get("MEDIA_DB", "media.db")


@contextmanager
def connect() -> Iterator[Any]:
    """A connection in a transaction, committed on success; `?` placeholders either way."""
    target = url()
    if target.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(target) as conn:
            cursor = conn.cursor()
            for statement in SCHEMA:
                cursor.execute(statement.replace("REAL", "DOUBLE PRECISION"))
            yield _Postgres(cursor)
        return
    conn = sqlite3.connect(target, timeout=30)
    try:
        with conn:
            for statement in SCHEMA:
                conn.execute(statement)
            yield conn
    finally:
        conn.close()


class _Postgres:
    """psycopg with sqlite3's `?` placeholders, for the few statements here."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        self.cursor.execute(sql.replace("?", "%s"), params)
        return self.cursor


def save_segments(media_id: str, segments: list[dict[str, Any]]) -> int:
    with connect() as db:
        db.execute("DELETE FROM media_segments WHERE media_id = ?", (media_id,))
        for seq, s in enumerate(segments):
            db.execute("INSERT INTO media_segments VALUES (?, ?, ?, ?, ?)",
                       (media_id, seq, s["start_s"], s["end_s"], s["text"]))
    return len(segments)


def save_chunks(media_id: str, texts: list[str], embedder: str,
                vectors: list[list[float]]) -> int:
    with connect() as db:
        db.execute("DELETE FROM media_chunks WHERE media_id = ?", (media_id,))
        for seq, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            db.execute("INSERT INTO media_chunks VALUES (?, ?, ?, ?, ?)",
                       (media_id, seq, text, embedder, json.dumps(vector)))
    return len(texts)


def record_failure(media_id: str, error: str) -> None:
    with connect() as db:
        db.execute("INSERT INTO media_failures VALUES (?, ?, ?)", (media_id, error, time.time()))


def notify(media_id: str, user_id: str, message: str) -> dict[str, str]:
    """Stands in for an email or push notification: recorded once per media."""
    with connect() as db:
        db.execute("DELETE FROM media_notifications WHERE media_id = ?", (media_id,))
        db.execute("INSERT INTO media_notifications VALUES (?, ?, ?)",
                   (media_id, user_id, message))
    return {"user_id": user_id, "message": message}


def rows(table: str, media_id: str) -> list[tuple[Any, ...]]:
    """What a table holds for a media id (for tests and the curious)."""
    assert table in {"media_segments", "media_chunks", "media_failures", "media_notifications"}
    with connect() as db:
        return list(db.execute(f"SELECT * FROM {table} WHERE media_id = ?",
                               (media_id,)).fetchall())
