"""The `stepwise` command: dev server, production server and worker, and a small client."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import secrets
import sys
import urllib.error
import urllib.request
from typing import Any

import click

from .app import App
from .payloads import Limits
from .status import RunStatus

DEFAULT_URL = "http://127.0.0.1:8288"


def load_app(spec: str) -> App:
    """`module:attribute` (or `path/to/file.py:attribute`) to the App it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:APP (e.g. examples.signup:app)")
    if module_name.endswith(".py"):
        directory, _, filename = module_name.rpartition("/")
        sys.path.insert(0, os.path.abspath(directory or "."))
        module_name = filename[:-3]
    else:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.BadParameter(f"{module_name}:{attr} is {type(app).__name__}, not a "
                                 "stepwise.App")
    return app


def _positive(_: Any, param: click.Parameter, value: Any) -> Any:
    if value is not None and value <= 0:
        raise click.BadParameter(f"{param.name} must be positive")
    return value


db_option = click.option("--db", envvar="STEPWISE_DB", default=None,
                         help="Database URL: a SQLite path (default .stepwise/stepwise.db), "
                              "sqlite:///path or postgresql://...  [env STEPWISE_DB]")
url_option = click.option("--url", envvar="STEPWISE_URL", default=DEFAULT_URL, show_default=True,
                          help="Server to talk to  [env STEPWISE_URL]")
lease_option = click.option("--lease-seconds", type=float, default=30.0, show_default=True,
                            callback=_positive,
                            help="How long a run stays with a worker that stops renewing it")
poll_option = click.option("--poll-seconds", type=float, default=1.0, show_default=True,
                           callback=_positive,
                           help="How often an idle worker looks for work it was not woken for "
                                "(SQLite shared by several processes has no wake-ups)")


def limits_options(fn: Any) -> Any:
    """--max-event-bytes, --max-request-bytes, --max-step-output-bytes (and STEPWISE_ env)."""
    defaults = Limits()
    for name, default, what in (
            ("event", defaults.event_bytes, "one event's data"),
            ("request", defaults.request_bytes, "one request body"),
            ("step-output", defaults.step_output_bytes, "one step's (or run's) output")):
        fn = click.option(f"--max-{name}-bytes", type=click.IntRange(min=1), default=default,
                          show_default=True,
                          envvar=f"STEPWISE_MAX_{name.upper().replace('-', '_')}_BYTES",
                          help=f"Largest {what}, in bytes")(fn)
    return fn


def _limits(options: dict[str, Any]) -> Limits:
    return Limits(event_bytes=options["max_event_bytes"],
                  request_bytes=options["max_request_bytes"],
                  step_output_bytes=options["max_step_output_bytes"])


concurrency_option = click.option("--concurrency", type=int, default=10, show_default=True,
                                  callback=_positive, help="Runs executed at once per process")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug details")
def main(verbose: bool) -> None:
    """stepwise: durable background functions made of memoized steps."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option("--port", type=click.IntRange(1, 65535), default=8288, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@db_option
@concurrency_option
@lease_option
@poll_option
@limits_options
def dev(app_spec: str, port: int, host: str, db: str | None, concurrency: int,
        lease_seconds: float, poll_seconds: float, **limits: int) -> None:
    """Server, worker and dashboard in one process, on embedded SQLite by default."""
    app = load_app(app_spec)
    asyncio.run(_serve(app=app, db=db, host=host, port=port, event_key=None,
                       concurrency=concurrency, lease_seconds=lease_seconds,
                       poll_seconds=poll_seconds, with_http=True, limits=_limits(limits)))


@main.command()
@db_option
@click.option("--port", type=click.IntRange(1, 65535), default=8288, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--event-key", envvar="STEPWISE_EVENT_KEY", default=None,
              help="Bearer token required to send events  [env STEPWISE_EVENT_KEY]")
@limits_options
def server(db: str | None, port: int, host: str, event_key: str | None, **limits: int) -> None:
    """The HTTP API and dashboard alone (run workers separately).

    Sending events always needs an event key here: --event-key, STEPWISE_EVENT_KEY, or else the
    one generated and stored in the database by the first server (printed at start).
    """
    asyncio.run(_serve(app=None, db=db, host=host, port=port, event_key=event_key,
                       concurrency=1, lease_seconds=30.0, poll_seconds=1.0, with_http=True,
                       limits=_limits(limits)))


@main.command()
@click.argument("app_spec", metavar="MODULE:APP")
@db_option
@concurrency_option
@lease_option
@poll_option
@limits_options
def worker(app_spec: str, db: str | None, concurrency: int, lease_seconds: float,
           poll_seconds: float, **limits: int) -> None:
    """A worker alone: executes the app's runs from the database."""
    app = load_app(app_spec)
    asyncio.run(_serve(app=app, db=db, host="", port=0, event_key=None, concurrency=concurrency,
                       lease_seconds=lease_seconds, poll_seconds=poll_seconds,
                       with_http=False, limits=_limits(limits)))


async def _serve(*, app: App | None, db: str | None, host: str, port: int,
                 event_key: str | None, concurrency: int, lease_seconds: float,
                 poll_seconds: float, with_http: bool, limits: Limits) -> None:
    import uvicorn

    from .engine import Engine
    from .server import create_server
    from .storage import open_storage
    from .worker import Worker

    storage = open_storage(db)
    await storage.open()
    worker_ = None
    try:
        if app is not None:
            worker_ = Worker(app, storage, concurrency=concurrency, lease_seconds=lease_seconds,
                             poll_interval=poll_seconds, limits=limits)
            await worker_.start()
            click.echo(f"stepwise worker {worker_.id}: app {app.id!r} with "
                       f"{len(app.functions)} functions, concurrency {concurrency}")
        if with_http and app is None and not event_key:
            event_key = await Engine(storage).setting("event_key", secrets.token_urlsafe(24))
            click.echo(f"event key (stored in the database, shared by every server): {event_key}"
                       "\nsend events with 'Authorization: Bearer <event key>'")
        if with_http:
            config = uvicorn.Config(create_server(storage, event_key=event_key, limits=limits),
                                    host=host, port=port, log_level="warning", lifespan="off")
            http = uvicorn.Server(config)
            click.echo(f"stepwise is running: dashboard and API at http://{host}:{port}/",
                       err=False)
            await http.serve()
            if not http.started:
                raise click.ClickException(f"could not listen on {host}:{port}")
        else:
            await _until_signal()
    finally:
        if worker_ is not None:
            await worker_.stop()
        await storage.close()


async def _until_signal() -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- client commands ---------------------------------------------------------------------

def _call(url: str, method: str, path: str, body: Any = None, event_key: str | None = None
          ) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if event_key:
        request.add_header("Authorization", f"Bearer {event_key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise click.ClickException(f"{method} {path}: {exc.code} {message}") from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach stepwise at {url}: {exc.reason} (is "
                                   "`stepwise dev` running? set --url)") from None


@main.command()
@click.argument("name")
@click.argument("data", default="{}")
@click.option("--id", "event_id", default=None, help="Idempotency id of the event")
@url_option
@click.option("--event-key", envvar="STEPWISE_EVENT_KEY", default=None)
def send(name: str, data: str, event_id: str | None, url: str, event_key: str | None) -> None:
    """Send event NAME with DATA (a JSON object)."""
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"DATA is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("DATA must be a JSON object, e.g. '{\"user_id\": 1}'")
    event: dict[str, Any] = {"name": name, "data": parsed}
    if event_id:
        event["id"] = event_id
    result = _call(url, "POST", "/api/v1/events", event, event_key)
    click.echo(" ".join(result["ids"]))


@main.command()
@click.option("--status", type=click.Choice([s.value for s in RunStatus]))
@click.option("--function", "function_id", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@url_option
def runs(status: str | None, function_id: str | None, limit: int, as_json: bool,
         url: str) -> None:
    """List recent runs."""
    query = "&".join(f"{k}={v}" for k, v in
                     (("status", status), ("function", function_id), ("limit", limit)) if v)
    result = _call(url, "GET", f"/api/v1/runs?{query}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for run in result["runs"]:
        error = run["error"]["message"] if run["error"] else ""
        click.echo(f"{run['id']}  {run['function_id']:<28} {run['status']:<10} "
                   f"{run['started_at'] or '-':<29} {error}")


@main.command()
@click.argument("run_id")
@url_option
def replay(run_id: str, url: str) -> None:
    """Start a failed or cancelled run again (completed steps keep their results)."""
    run = _call(url, "POST", f"/api/v1/runs/{run_id}/replay")
    click.echo(f"{run['id']} {run['status']} (attempt {run['attempts']})")


@main.command()
@click.argument("run_id")
@url_option
def cancel(run_id: str, url: str) -> None:
    """Cancel a run; a running one stops at its next step."""
    run = _call(url, "POST", f"/api/v1/runs/{run_id}/cancel")
    click.echo(f"{run['id']} {run['status']}")


if __name__ == "__main__":
    main()
