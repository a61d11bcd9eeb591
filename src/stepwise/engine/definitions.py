"""Function definitions in storage: registration (with cron schedules) and lookup."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .. import schedules
from ..definition import CronTrigger, EventTrigger, FunctionDefinition
from ..payloads import dumps, loads
from ..storage import Tx


@lru_cache(maxsize=4096)
def decode(text: str) -> FunctionDefinition:
    """A stored definition (cached: definitions are immutable values)."""
    return FunctionDefinition.from_json(loads(text))


@dataclass(frozen=True)
class AppSource:
    """Where an app's functions came from: an SDK's sync (its URL, SDK, framework) or a
    Python app's worker."""

    sdk: str
    url: str | None = None
    framework: str | None = None
    #: What the app's last sync said that was ignored (unknown fields).
    warnings: tuple[str, ...] = ()


PYTHON_APP = AppSource("stepwise-python")


def register(tx: Tx, app_id: str, definitions: list[FunctionDefinition], now: int,
             source: AppSource = PYTHON_APP) -> bool:
    """Replace the app's definitions; keep the next tick of schedules that did not change.
    False when they are the same as stored (then only the app's sync time is written).

    Registrations of one app are serialized (workers and servers start together), so two
    never interleave their deletes and inserts."""
    tx.one("lock_key", key=f"stepwise.register:{app_id}")
    wanted_rows = sorted((d.id, dumps(d.to_json(), "function definition")) for d in definitions)
    changed = [(r["id"], r["definition"]) for r in tx.all(
        "app_definitions", app_id=app_id)] != wanted_rows
    tx.exec("upsert_app", id=app_id, url=source.url, sdk=source.sdk,
            framework=source.framework, now=now, changed=int(changed),
            warnings=dumps(list(source.warnings), "warnings") if source.warnings else None)
    if not changed:
        return False
    tx.exec("delete_app_triggers", app_id=app_id)
    tx.exec("delete_app_functions", app_id=app_id)
    wanted = set()
    for d in definitions:
        tx.exec("insert_function", app_id=app_id, id=d.id, sdk=int(d.url is not None),
                definition=dumps(d.to_json(), "function definition"), now=now)
        for trigger in d.triggers:
            if isinstance(trigger, EventTrigger):
                tx.exec("insert_trigger", event_name=trigger.event, app_id=app_id,
                        function_id=d.id)
            elif isinstance(trigger, CronTrigger):
                wanted.add((d.id, trigger.cron, trigger.tz))
                tx.exec("insert_schedule", app_id=app_id, function_id=d.id, cron=trigger.cron,
                        tz=trigger.tz, next_at=schedules.next_tick(trigger.cron, trigger.tz, now))
    for row in tx.all("app_schedules", app_id=app_id):
        if (row["function_id"], row["cron"], row["tz"]) not in wanted:
            tx.exec("delete_schedule", app_id=app_id, **row)
    return True


def get(tx: Tx, app_id: str, function_id: str) -> FunctionDefinition | None:
    row = tx.one("get_function", app_id=app_id, id=function_id)
    return None if row is None else decode(row["definition"])


def find(tx: Tx, app_id: str, function_id: str) -> tuple[str, FunctionDefinition] | None:
    """The function an invoke names, and its app: one of `app_id`'s own, else the one
    function of any app with that id (SDK ids are already `<app>-<fn>`), else `<app>-<fn>`
    read as a function of another app (how an SDK names a Python function)."""
    own = get(tx, app_id, function_id)
    if own is not None:
        return app_id, own
    rows = tx.all("functions_with_id", id=function_id)
    if len(rows) == 1:
        return str(rows[0]["app_id"]), decode(rows[0]["definition"])
    for at, char in enumerate(function_id):
        if char == "-" and 0 < at < len(function_id) - 1:
            found = get(tx, function_id[:at], function_id[at + 1:])
            if found is not None:
                return function_id[:at], found
    return None


def list_apps(tx: Tx) -> list[dict[str, Any]]:
    """Every app with the ids of its functions."""
    functions: dict[str, list[str]] = {}
    for row in tx.all("list_functions"):
        functions.setdefault(row["app_id"], []).append(row["id"])
    return [{**row, "warnings": loads(row["warnings"]) if row["warnings"] else [],
             "functions": functions.get(row["id"], [])} for row in tx.all("list_apps")]


def app_changes(tx: Tx) -> dict[str, tuple[int, str | None]]:
    """When each app's definitions last changed, and the SDK its last sync named (an app
    redeployed on a newer SDK may sync the same functions): a process keeping something per
    app (the SDK apps' executors) compares them to reload only the apps that changed."""
    return {str(r["id"]): (int(r["changed_at"]), r["sdk"]) for r in tx.all("list_apps")}


def app_functions(tx: Tx, app_id: str) -> list[dict[str, Any]]:
    """One app's functions, as `list_all` shows them (without `updated_at`)."""
    return [loads(r["definition"]) for r in tx.all("app_definitions", app_id=app_id)]


def list_all(tx: Tx) -> list[dict[str, Any]]:
    """Every registered function as the API shows it."""
    return [_shown(r) for r in tx.all("list_functions")]


def list_page(tx: Tx, after: tuple[str, str] | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` registered functions after `after` (app id, function id), in that order."""
    after_app, after_id = after or ("", "")
    return [_shown(r) for r in tx.all("list_functions_page", after_app=after_app,
                                      after_id=after_id, limit=limit)]


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {**loads(row["definition"]), "updated_at": row["updated_at"]}
