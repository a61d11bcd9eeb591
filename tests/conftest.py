"""Fixtures shared by every test: a database URL per backend, each test isolated."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

#: Where the PostgreSQL tests run; set STEPWISE_TEST_POSTGRES to point them elsewhere.
POSTGRES_URL = os.environ.get("STEPWISE_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return str(exc)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stepwise chaos")
    group.addoption("--chaos-events", type=int, default=400,
                    help="events sent per backend by tests/chaos (release size: 10000)")
    group.addoption("--chaos-kills", type=int, default=4,
                    help="kill -9s per backend by tests/chaos (release size: 20)")


_pg_problem: str | bool | None = False


def postgres_or_skip() -> None:
    """Skip locally when PostgreSQL is not there; in CI (CI=true) fail loudly instead."""
    global _pg_problem
    if _pg_problem is False:
        _pg_problem = _postgres_reachable()
    if _pg_problem:
        message = f"PostgreSQL unreachable at {POSTGRES_URL}: {_pg_problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards; yields a URL using it."""
    postgres_or_skip()
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of each backend; the same test runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stepwise.db'}"
    return str(request.getfixturevalue("pg_schema"))
