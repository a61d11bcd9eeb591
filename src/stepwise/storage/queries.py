"""Loads the named SQL of `sql/queries.sql`, picking each block's dialect variant.

`{unfinished_runs}`-style macros expand to the status lists of `stepwise.status`, and
`{run:queued}` / `{step:completed}` to one status word, so the SQL and the code share one
vocabulary (a misspelt status fails as the queries load); `{query:name}` includes another
named query or fragment.

A statement that makes work due for workers (a queue row became due, a concurrency key was
freed, a schedule changed) says so in its comment: `-- wakes: always`, `-- wakes: if :param`
(when that list parameter is not empty) or `-- wakes: if wake` (when a row it answers has a
true `wake` column). The backends wake every worker once a transaction that ran one commits
(`wakes`), so the engine never has to remember to.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from ..status import (
    FINAL_STEP,
    PARKED_RUN,
    PENDING_STEP,
    TIMED_STEP,
    UNFINISHED_RUN,
    RunStatus,
    StepStatus,
    sql_list,
)

_NAME = re.compile(r"^-- name: (\w+)(?: @(\w+))?\s*$", re.M)
_PARAM = re.compile(r"(?<![:\w]):(\w+)")
MACROS = {
    "{unfinished_runs}": sql_list(UNFINISHED_RUN),
    "{parked_runs}": sql_list(PARKED_RUN),
    "{final_steps}": sql_list(FINAL_STEP),
    "{pending_steps}": sql_list(PENDING_STEP),
    "{timed_steps}": sql_list(TIMED_STEP),
}


@cache
def load(dialect: str) -> dict[str, str]:
    """Every named query for `dialect`, with parameters as the driver takes them."""
    named = load_raw(dialect)
    if dialect == "postgres":
        return {k: to_pyformat(v) for k, v in named.items()}
    return named


@cache
def load_raw(dialect: str) -> dict[str, str]:
    """Every named query for `dialect` with `:name` parameters (to compose into raw SQL)."""
    text = resources.files("stepwise.storage").joinpath("sql/queries.sql").read_text()
    for macro, value in MACROS.items():
        text = text.replace(macro, value)
    text = _STATUS.sub(_status_word, text)
    marks = list(_NAME.finditer(text))
    base: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end():end].strip().rstrip(";")
        name, variant = mark.group(1), mark.group(2)
        target = base if variant is None else overrides if variant == dialect else None
        if target is None:
            continue
        if name in target:
            raise ValueError(f"queries.sql defines {name!r} twice")
        target[name] = body
    base.update(overrides)
    return {name: _include(body, base) for name, body in base.items()}


_STATUS = re.compile(r"\{(run|step):(\w+)\}")
_STATUSES: dict[str, type[RunStatus] | type[StepStatus]] = {"run": RunStatus,
                                                            "step": StepStatus}


def _status_word(mark: re.Match[str]) -> str:
    """`{run:queued}` as an SQL string; a word that is not a status raises."""
    kind, word = mark.group(1), mark.group(2)
    try:
        return f"'{_STATUSES[kind][word].value}'"
    except KeyError:
        raise ValueError(f"queries.sql: {mark.group(0)} is not a {kind} status") from None


_WAKES = re.compile(r"^-- wakes: (always|if :(\w+)|if wake)\s*$", re.M)

#: How a statement makes work due: always, when a list parameter is not empty, or when a
#: row it answers has a true `wake` column.
ALWAYS, ANSWERED = "always", "wake"


@cache
def wakes() -> dict[str, str]:
    """Each waking statement (either dialect's) and its rule: ALWAYS, ANSWERED or the name of
    the parameter that must not be empty."""
    text = resources.files("stepwise.storage").joinpath("sql/queries.sql").read_text()
    marks = list(_NAME.finditer(text))
    found: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        rule = _WAKES.search(text, mark.end(), end)
        if rule is not None:
            found[mark.group(1)] = rule.group(2) or (ANSWERED if rule.group(1) == "if wake"
                                                     else ALWAYS)
    return found


def woke(rule: str | None, params: dict[str, object], rows: list[dict[str, object]] | None
         ) -> bool:
    """Whether a statement with wake `rule` (`wakes()[name]`, None: it never wakes) made work
    due, from its parameters and (when read) the rows it answered."""
    if rule is None:
        return False
    if rule == ALWAYS:
        return True
    if rule == ANSWERED:
        return bool(rows) and any(row.get("wake") for row in rows or ())
    return bool(params.get(rule))


_INCLUDE = re.compile(r"\{query:(\w+)\}")


def _include(body: str, named: dict[str, str]) -> str:
    """`{query:name}` stands for another named query of the same dialect (one statement that
    a larger one uses as is, e.g. in a CTE), so the two cannot drift apart."""
    return _INCLUDE.sub(lambda m: _include(without_comments(named[m.group(1)]), named), body)


def without_comments(body: str) -> str:
    """A named query without its comment lines (an included fragment's notes stay here)."""
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))


def to_pyformat(sql: str) -> str:
    """`:name` parameters to psycopg's `%(name)s`, leaving `::casts` alone."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
