"""Versioned schema migrations: numbered SQL files shared by both dialects (types that mean
the same in both, e.g. BIGINT), applied in one transaction. `{without_rowid}` after a
CREATE TABLE's closing parenthesis makes the table its primary key's b-tree on SQLite (an
index-organised table; nothing on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any


def migration_files() -> list[tuple[int, str]]:
    folder = resources.files("stepwise.storage").joinpath("migrations")
    out = []
    names: dict[int, str] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            if number in names:  # a stale copy left by a rename in an old build tree
                raise RuntimeError(f"two migrations numbered {number}: {names[number]} and "
                                   f"{entry.name}")
            names[number] = entry.name
            out.append((number, entry.read_text()))
    return sorted(out)


#: Per dialect, what each macro of a migration stands for.
MACROS = {"sqlite": {"{without_rowid}": " WITHOUT ROWID"}, "postgres": {"{without_rowid}": ""}}


def apply_migrations(*, dialect: str, begin: Callable[[], Any], execute: Callable[[str], Any],
                     applied: Callable[[], set[int]], record: Callable[[int], Any],
                     commit: Callable[[], Any]) -> int:
    begin()
    execute("CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
    done = applied()
    version = max(done, default=0)
    for number, text in migration_files():
        if number in done:
            continue
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        for macro, value in MACROS[dialect].items():
            code = code.replace(macro, value)
        for statement in (s.strip() for s in code.split(";")):
            if statement:
                execute(statement)
        record(number)
        version = number
    commit()
    return version
