"""The run search index: the terms each run is found by, in `run_terms (term, run_id)`.

A run's terms are written with the run (its event's name and data) and with each error it
records (the words of the error's name and message), so that a search reads one index range,
newest run first, instead of every run's event or error (see `engine.search`). Three kinds,
told apart by a prefix:

- `e:NAME`: the name of the run's event (names up to `MAX_VALUE` characters);
- `d:PATH=VALUE`: a string, number or boolean of the event's data at a dotted PATH of object
  keys (`user.id=42`, as `event_data=` and the search's `path=value` read it);
- `w:WORD`: a word of an error's name or message (lower case).

An event's data is indexed breadth first, at most `MAX_DATA_TERMS` values; a value longer
than `MAX_VALUE` characters, or one past that count, is not, and the run gets the marker
`d~N` instead (N: the depth, in keys, of the shallowest value left out), so a search for a
value at depth N or more also checks, one by one, the runs with such a marker.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..payloads import PayloadError, loads

log = logging.getLogger("stepwise.storage")

#: The most values of one event's data indexed (a larger event gets a `d~N` marker).
MAX_DATA_TERMS = 64
#: The longest event name or data value indexed, in characters.
MAX_VALUE = 256
#: The most words indexed from one error (its name, then its message).
MAX_WORDS = 64
#: The longest word indexed.
MAX_WORD = 64
#: The deepest marker depth written (deeper values share it).
MAX_DEPTH = 9

#: A key that a dotted path can name (`event_data=`'s pattern: no dots, no brackets).
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words of `text` as the index holds them: lower case, in order, each once."""
    seen: dict[str, None] = {}
    for match in WORD.finditer(text.lower()):
        word = match.group(0)
        if len(word) <= MAX_WORD:
            seen.setdefault(word, None)
    return list(seen)


def scalar_text(value: Any) -> str | None:
    """A data value as its term holds it: strings as they are (a NUL as U+FFFD, as
    PostgreSQL compares them), numbers as JSON writes them, booleans `true`/`false`;
    None for anything else (null, objects, arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, int | float):
        return repr(value)
    return None


def _leaves(data: Any) -> Iterator[tuple[str, int, str | None]]:
    """(path, depth, text) of every value at a dotted path of identifier keys, breadth first
    (nulls, arrays and what they hold are left out: no path reaches them); text None for a
    value too long to be indexed."""
    level: list[tuple[str, dict[str, Any]]] = [("", data)] if isinstance(data, dict) else []
    depth = 1
    while level:
        deeper: list[tuple[str, dict[str, Any]]] = []
        for prefix, obj in level:
            for key, value in obj.items():
                if not IDENTIFIER.match(key):
                    continue  # no dotted path can name it
                if isinstance(value, dict):
                    deeper.append((prefix + key + ".", value))
                    continue
                text = scalar_text(value)
                if text is not None:
                    yield prefix + key, depth, text if len(text) <= MAX_VALUE else None
        level, depth = deeper, depth + 1


def event_terms(name: str, data: Any) -> list[str]:
    """The terms of a run started by an event `name` with `data` (parsed JSON, or its text)."""
    if isinstance(data, str | bytes):
        try:
            data = loads(data)
        except PayloadError:
            data = None
    terms = [f"e:{name}"] if len(name) <= MAX_VALUE else []
    first = len(terms)
    left_out: int | None = None  # the shallowest depth of a value not indexed
    for path, depth, text in _leaves(data):
        if text is not None and len(terms) - first < MAX_DATA_TERMS:
            terms.append(f"d:{path}={text}")
            continue
        left_out = depth if left_out is None else left_out  # breadth first: the shallowest
        if text is not None:
            break  # over the count: everything after is left out too
    if left_out is not None:
        terms.append(f"d~{min(left_out, MAX_DEPTH)}")
    return list(dict.fromkeys(terms))


def error_terms(error: Any) -> list[str]:
    """The terms of an error (`{"name", "message", ...}` or a plain string): the words of its
    name and message, at most MAX_WORDS."""
    if isinstance(error, dict):
        text = f"{error.get('name') or ''} {error.get('message') or ''}"
    elif isinstance(error, str):
        text = error
    else:
        return []
    return [f"w:{w}" for w in words(text)[:MAX_WORDS]]


def error_terms_of_json(error: str | None) -> list[str]:
    """`error_terms` of an error stored as JSON text."""
    if not error:
        return []
    try:
        return error_terms(loads(error))
    except PayloadError:
        return error_terms(error)


def data_term(path: str, value: str) -> str | None:
    """The term of `path=value` (None: a value too long to be indexed)."""
    value = value.replace("\x00", "\ufffd")
    return f"d:{path}={value}" if len(value) <= MAX_VALUE else None


def partial_markers(path: str) -> list[str]:
    """The markers of runs whose event may hold a value at `path` that was not indexed."""
    depth = path.count(".") + 1
    return [f"d~{n}" for n in range(1, min(depth, MAX_DEPTH) + 1)]


def pairs(run_id: str, terms: Iterable[str]) -> list[str]:
    """Terms as the `:run_terms` list of `insert_run_terms` takes them (`run_id term`)."""
    return [f"{run_id} {term}" for term in terms]


# --- indexing what was stored before the index ----------------------------------------------

#: Runs indexed per transaction by `backfill`.
BACKFILL_BATCH = 2000
#: The settings row that holds how far the backfill got (a run id; '' before the first).
BACKFILL_SETTING = "search_backfill_after"


Fetch = Callable[[str, dict[str, Any]], list[dict[str, Any]]]


def backfill_step(fetch: Fetch, limit: int = BACKFILL_BATCH) -> int | None:
    """Index one batch of the runs stored before the index (migration 0020 left the cursor
    `search_backfill_after` for them), in the caller's transaction: answers how many runs it
    indexed, None when none was left to index (the cursor is gone). `fetch(name, params)`
    runs a named query and answers its rows."""
    cursor = fetch("search_backfill_cursor", {})
    if not cursor:
        return None
    terms, last = backfill_batch(fetch, str(cursor[0]["value"]), limit)
    if terms:
        fetch("insert_run_terms", {"run_terms": terms})
    if last is None:
        fetch("end_search_backfill", {})
        return None
    fetch("set_search_backfill_cursor", {"after": last})
    return len({pair.split(" ", 1)[0] for pair in terms}) or 1


def backfill(fetch: Fetch, begin: Callable[[], Any], commit: Callable[[], Any],
             rollback: Callable[[], Any]) -> int:
    """Index every run stored before the index, a batch per transaction (`begin`, `commit`);
    a crash leaves the cursor where the last commit put it, and the next open goes on from
    there. Answers how many runs it indexed."""
    began, indexed = time.monotonic(), 0
    while True:
        begin()
        try:
            step = backfill_step(fetch)
        except BaseException:
            rollback()
            raise
        commit()
        if step is None:
            break
        indexed += step
    if indexed:
        log.info("search index: %d runs stored before it indexed in %.1f s", indexed,
                 time.monotonic() - began)
    return indexed


def backfill_batch(fetch: Fetch, after: str, limit: int = BACKFILL_BATCH
                   ) -> tuple[list[str], str | None]:
    """The `run_terms` pairs of up to `limit` runs after the run id `after`, oldest id first
    (their event, their error and the errors of their failed attempts), and the last run id
    read (None: no run was left). `fetch(name, params)` runs a named query."""
    runs = fetch("runs_to_index", {"after": after, "limit": limit})
    if not runs:
        return [], None
    out: list[str] = []
    for run in runs:
        terms = event_terms(run["event_name"], run["event_data"]) \
            if run["event_name"] is not None else []
        terms += error_terms_of_json(run["error"])
        out += pairs(run["id"], dict.fromkeys(terms))
    last = str(runs[-1]["id"])
    for failure in fetch("failures_to_index", {"after": after, "last": last}):
        out += pairs(failure["run_id"], error_terms_of_json(failure["error"]))
    return out, last
