"""Finding runs: the exact filters of `GET /api/v1/runs` and its search `q`, newest first, with
a count of the matches up to `COUNT_LIMIT`.

A condition on a run's event (its name, a value of its data) or on its errors' words reads the
search index `run_terms` (written by `storage.search`), whose key is (term, run id): one such
term drives the read, newest run first, and every other condition is checked on the runs it
yields, so a page costs about the same at ten thousand runs as at a million. Without such a
condition the runs' own indexes drive it (by id, function, status, event, creation time).

`q` is words separated by spaces (quotes group one with spaces), all of which must match:

- `path=value`: the event's data has `value` at the dotted `path` (as `event_data=`);
- `function:ID`, `event:NAME`, `error:WORD`, `id:PREFIX`: one kind of condition, said;
- any other word is the first of these that applies: a registered function's id, an event
  name a function is triggered by, the start of a run id (4 characters or more, when a run
  has such an id), else words of the run's errors (each word of its name and message, in any
  case; the errors of failed attempts count too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

from ..storage import Tx, search
from ..storage.rows import RunRow

#: Matches are counted up to this many; more is "more than COUNT_LIMIT".
COUNT_LIMIT = 1_000
#: How far a term's matches are counted to pick the rarest as the one that drives the read.
PROBE_LIMIT = 1_000
#: The most words one `q` may hold (`Q_PATTERN` says so in the API's schema).
MAX_CONDITIONS = 16
#: How many of a search's terms are counted to pick the rarest.
PROBED_TERMS = 8
#: A search of at most MAX_CONDITIONS words (separated by white space), without NUL.
Q_PATTERN = r"^\s*(?:[^\s\x00]+\s+){0,%s}[^\s\x00]*\s*$".replace("%s", str(MAX_CONDITIONS - 1))
QUALIFIERS = ("function", "event", "error", "id")
#: A run id's start (Crockford base32, as `payloads.new_id` writes ids), in upper case.
ID_PREFIX = re.compile(r"[0-9A-HJKMNP-TV-Z]{4,26}\Z")
#: `path=value`, the path as `event_data=` takes it (dotted names).
DATA_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)\Z", re.S)

#: The filters checked on the run's own row (`before` only on a page, never in a count).
_RUN_FILTERS = {"function": "r.function_id = :function", "status": "r.status = :status",
                "event_id": "r.event_id = :event_id", "app": "r.app_id = :app",
                "since": "r.created_at >= :since", "until": "r.created_at < :until"}
_COLUMNS = ("r.id, r.app_id, r.function_id, r.event_id, r.status, {output}, "
            "r.attempts, r.retry, r.origin_run_id, r.parent_run_id, r.parent_step_id, "
            "r.rerun_of, r.created_at, r.started_at, r.ended_at, "
            "(SELECT COUNT(*) FROM failures f WHERE f.run_id = r.id) AS failed_attempts")


@dataclass
class Found:
    """A page of runs, and how many match in all: `total`, exact unless more than
    COUNT_LIMIT match (then `exact` is False and `total` is COUNT_LIMIT)."""

    runs: list[RunRow]
    total: int | None = None
    exact: bool = True


@dataclass
class _Term:
    """A condition read from the index: the runs with `term`; for a data value, also the
    runs whose event left values out of the index (`markers`) and has it (`check`)."""

    term: str | None
    markers: list[str] = field(default_factory=list)
    check: str = ""


@dataclass
class _Plan:
    """Conditions: SQL on the run `r` (with their parameters) and terms of the index."""

    where: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    terms: list[_Term] = field(default_factory=list)
    #: An event id or a run id prefix: fewer runs than any term has, read by the runs' index.
    narrow: bool = False
    #: The term that drives the read, once chosen (`_driver`).
    driver: list[_Term | None] = field(default_factory=list)

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def has_term(self, term: _Term, run: str = "r.id") -> str:
        """SQL: the run whose id is `run` matches `term` (through the index, or a left-out
        value its event holds)."""
        found = (f"EXISTS (SELECT 1 FROM run_terms t WHERE t.term = {self.param(term.term)} "
                 f"AND t.run_id = {run})") if term.term is not None else "1 = 0"
        if not term.markers:
            return found
        return (f"({found} OR (EXISTS (SELECT 1 FROM run_terms t WHERE t.term IN "
                f"({', '.join(self.param(m) for m in term.markers)}) AND t.run_id = {run}) "
                f"AND {term.check}))")


def _plan(tx: Tx, filters: dict[str, Any], q: str | None) -> _Plan:
    """The conditions of `filters` (those of `list_runs`) and of the search `q`."""
    plan = _Plan()
    params = {k: v for k, v in filters.items() if v is not None}
    for name, sql in _RUN_FILTERS.items():
        if name in params:
            plan.where.append(sql)
            plan.params[name] = params[name]
    plan.narrow = "event_id" in params
    if "statuses" in params:  # a JSON list (bulk operations: the statuses they may change)
        plan.where.append(tx.text("run_status_in"))
        plan.params["statuses"] = params["statuses"]
    if "event_name" in params:
        _event_name(tx, plan, params["event_name"])
    if "data_field" in params:
        _data(tx, plan, params["data_field"], params.get("data_value") or "")
    if q:
        _read_q(tx, plan, q)
    return plan


def _event_name(tx: Tx, plan: _Plan, name: str) -> None:
    if len(name) <= search.MAX_VALUE:
        plan.terms.append(_Term(f"e:{name}"))
    else:  # never indexed: read from the event
        plan.where.append("EXISTS (SELECT 1 FROM events e WHERE e.id = r.event_id AND "
                          f"e.name = {plan.param(name)})")


def _data(tx: Tx, plan: _Plan, path: str, value: str) -> None:
    """Runs whose event's data has `value` at `path`: the index, and the runs whose event had
    values left out of it at that depth or less (checked on the event), if any has."""
    markers = search.partial_markers(path)
    if tx.one("any_run_term", ids=markers) is not None:
        field_name, value_name = plan.param(path), plan.param(value)
        check = ("EXISTS (SELECT 1 FROM events e WHERE e.id = r.event_id AND "
                 + tx.text("event_field_equals").replace(":data_field", field_name)
                 .replace(":data_value", value_name) + ")")
    else:
        markers, check = [], ""
    plan.terms.append(_Term(search.data_term(path, value), markers, check))


def _words(q: str) -> list[str]:
    """The words of `q`, split at white space; quotes (" or ') group words with spaces into
    one and are dropped, and a quote left open runs to the end (as the one typing meant)."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote = ""
    for char in q:
        if quote and char == quote:
            quote = ""
        elif quote or not (char.isspace() or char in "\"'"):
            word.append(char)
            in_word = True
        elif char in "\"'":
            quote, in_word = char, True
        elif in_word:
            words.append("".join(word))
            word, in_word = [], False
    if in_word:
        words.append("".join(word))
    return words


def _read_q(tx: Tx, plan: _Plan, q: str) -> None:
    words = _words(q)  # at most MAX_CONDITIONS, as Q_PATTERN lets the API take
    known: tuple[set[str], set[str]] | None = None
    for word in words:
        kind, _, rest = word.partition(":")
        if kind in QUALIFIERS and rest:
            _qualified(tx, plan, kind, rest)
            continue
        data = DATA_WORD.match(word)
        if data:
            _data(tx, plan, data.group(1), data.group(2))
            continue
        if known is None:
            known = ({r["id"] for r in tx.all("search_function_ids")},
                     {r["event_name"] for r in tx.all("search_event_names")})
        if word in known[0]:
            _qualified(tx, plan, "function", word)
        elif word in known[1]:
            _qualified(tx, plan, "event", word)
        elif ID_PREFIX.match(word.upper()) and _id_exists(tx, word.upper()):
            _qualified(tx, plan, "id", word)
        else:
            _qualified(tx, plan, "error", word)


def _qualified(tx: Tx, plan: _Plan, kind: str, text: str) -> None:
    if kind == "function":
        plan.where.append(f"r.function_id = {plan.param(text)}")
    elif kind == "event":
        _event_name(tx, plan, text)
    elif kind == "id":
        low = text.upper()
        plan.where.append(f"r.id >= {plan.param(low)} AND r.id < {plan.param(low + '~')}")
        plan.narrow = True
    else:
        # A word with nothing to search for (only punctuation) asks for nothing.
        plan.terms += [_Term(f"w:{w}") for w in search.words(text)]


def _id_exists(tx: Tx, prefix: str) -> bool:
    return tx.one("run_with_id_prefix", low=prefix, high=prefix + "~") is not None


def _driver(tx: Tx, plan: _Plan) -> _Term | None:
    """The term that drives the read: the one with the fewest runs (counted up to
    PROBE_LIMIT); None when the runs' own indexes should (no term, only values never
    indexed, or an event id or id prefix)."""
    if not plan.driver:
        candidates = [t for t in plan.terms if t.term is not None]
        if not candidates or plan.narrow:
            plan.driver.append(None)
        elif len(candidates) == 1:
            plan.driver.append(candidates[0])
        else:
            counted = []  # the first few: a long search costs a few probes, not one a word
            for position, term in enumerate(candidates[:PROBED_TERMS]):
                row = tx.one("count_term_runs", term=term.term, limit=PROBE_LIMIT)
                counted.append((int(row["n"]) if row else 0, position))
            plan.driver.append(candidates[min(counted)[1]])
    return plan.driver[0]


def _selects(tx: Tx, plan: _Plan, columns: str | None, limit: int, before: str | None
             ) -> tuple[list[str], dict[str, Any]]:
    """One SELECT per branch of the driving term (its index range; and, for a data value,
    the runs with a left-out value that has it), each limited: together, the matches. Without
    a driving term, one SELECT that the runs' indexes serve. With `columns`, newest first;
    without (a count), in no order, and the runs themselves are not read when no condition
    needs their row (every term of the index belongs to a stored run)."""
    params = dict(plan.params)
    checks = list(plan.where)
    if before is not None:
        checks.append("r.id < :before")
        params["before"] = before
    driver = _driver(tx, plan)
    others = [t for t in plan.terms if t is not driver]
    bare = columns is None and not checks and not any(t.markers for t in others)
    checks += [plan.has_term(t, "d.run_id" if bare else "r.id") for t in others]
    params.update(plan.params)  # has_term's parameters
    limited = f" LIMIT {int(limit)}"
    select = f"SELECT {columns or '1'} FROM "
    if driver is None:
        return [select + "runs r" + (" WHERE " + " AND ".join(checks) if checks else "") +
                (" ORDER BY r.id DESC" if columns else "") + limited], params
    and_checks = "".join(f" AND {c}" for c in checks)
    params["drive"] = driver.term
    # CROSS JOIN: SQLite reads the terms first, in the index's order (PostgreSQL plans it
    # as any join); the order by d.run_id is the index's, so no sort.
    branches = [select + ("run_terms d WHERE d.term = :drive" if bare else
                          "run_terms d CROSS JOIN runs r WHERE d.term = :drive AND "
                          "r.id = d.run_id") + and_checks +
                (" ORDER BY d.run_id DESC" if columns else "") + limited]
    if driver.markers:
        params.update({f"mark{i}": m for i, m in enumerate(driver.markers)})
        marks = ", ".join(f":mark{i}" for i in range(len(driver.markers)))
        branches.append(
            f"{select}run_terms d CROSS JOIN runs r WHERE d.term IN ({marks}) "
            "AND r.id = d.run_id AND NOT EXISTS (SELECT 1 FROM run_terms t WHERE "
            f"t.term = :drive AND t.run_id = r.id) AND {driver.check}{and_checks}" +
            (" ORDER BY r.id DESC" if columns else "") + limited)
    return branches, params


def find_runs(tx: Tx, filters: dict[str, Any], limit: int, *, q: str | None = None,
              preview: int | None = None, count: bool = False) -> Found:
    """Runs matching `filters` and `q`, newest first (`before`: after that run id, paging);
    with `count`, how many match in all (`before` aside). With `preview`, `output` and
    `error` hold at most `preview + 1` characters (longer means cut), so a page of big
    outputs is never read whole."""
    tx.one("search_plan")
    before = filters.get("before")
    plan = _plan(tx, {k: v for k, v in filters.items() if k != "before"}, q)
    output = ("r.output, r.error" if preview is None else
              f"substr(r.output, 1, {int(preview) + 1}) AS output, "
              f"substr(r.error, 1, {int(preview) + 1}) AS error")
    branches, params = _selects(tx, plan, _COLUMNS.format(output=output), limit, before)
    rows = _union(tx, branches, params, limit)
    found = Found(cast(list[RunRow], rows))
    if count:
        branches, params = _selects(tx, plan, None, COUNT_LIMIT + 1, None)
        total = sum(int(tx.raw_all(f"SELECT COUNT(*) AS n FROM ({b}) x", params)[0]["n"])
                    for b in branches)
        found.total, found.exact = min(total, COUNT_LIMIT), total <= COUNT_LIMIT
    return found


def _union(tx: Tx, branches: list[str], params: dict[str, Any], limit: int
           ) -> list[dict[str, Any]]:
    if len(branches) == 1:
        return tx.raw_all(branches[0], params)
    rows = [row for b in branches for row in tx.raw_all(b, params)]
    return sorted(rows, key=lambda r: r["id"], reverse=True)[:limit]


def where(tx: Tx, filters: dict[str, Any], q: str | None = None) -> tuple[str, dict[str, Any]]:
    """FROM and WHERE of the runs `r` matching `filters` and `q`, with their parameters, for
    statements that go through every match (bulk operations)."""
    plan = _plan(tx, filters, q)
    checks = plan.where + [plan.has_term(t) for t in plan.terms]
    if "before" in filters and filters["before"] is not None:
        checks.append("r.id < :before")
        plan.params["before"] = filters["before"]
    return "FROM runs r" + (" WHERE " + " AND ".join(checks) if checks else ""), plan.params
