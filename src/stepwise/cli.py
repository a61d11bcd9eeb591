"""The `stepwise` command: dev server, production server and worker, and a small client."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import sqlite3
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from . import durations
from .access import LOCAL_HOSTS, Access, mask
from .admission import DEFAULT_MAX_IN_FLIGHT
from .app import App
from .errors import DefinitionError
from .executor import DEFAULT_LOOP_STALL_S
from .payloads import Limits
from .processes import ProcessOptions
from .remote.gateway import HostPolicy
from .remote.protocol import DEFAULT_CALL_TIMEOUT_S
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
    except DefinitionError as exc:  # a mistake in a declaration: one line says which
        where = _user_frame(exc)
        message = " ".join(str(exc).split())
        raise click.UsageError(f"{where}{message}") from None
    if not hasattr(module, attr):
        raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r} (the App "
                                 "object, e.g. app = stepwise.App(\"shop\"))")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise click.BadParameter(f"{module_name}:{attr} is {type(app).__name__}, not a "
                                 "stepwise.App")
    return app


def _user_frame(exc: BaseException) -> str:
    """`file.py:12: ` for the last frame of `exc` outside stepwise itself, or ''."""
    import traceback

    package = os.path.dirname(__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(package) and not f.filename.startswith("<")]
    return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


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


def _key(value: str | None, file: str | None, what: str) -> str | None:
    """A key from its flag or environment variable, or from a file (first line)."""
    if value is not None and file is not None:
        raise click.UsageError(f"give the {what} once: as a value or as a file, not both")
    if file is not None:
        try:
            with open(file, encoding="utf-8") as handle:
                value = handle.readline().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read the {what} file {file!r}: "
                                   f"{exc.strerror}") from None
        if not value:
            raise click.UsageError(f"the {what} file {file!r} is empty")
    if value is not None:
        value = value.strip()
        if not value or not value.isprintable() or " " in value:
            raise click.UsageError(f"the {what} must be printable text without spaces")
        if len(value) < MIN_KEY_CHARS:
            click.echo(f"warning: the {what} has {len(value)} characters; use at least "
                       f"{MIN_KEY_CHARS} (`stepwise new-key` makes one)", err=True)
    return value


#: Keys shorter than this are accepted with a warning.
MIN_KEY_CHARS = 16

max_in_flight_option = click.option(
    "--max-in-flight", type=click.IntRange(min=1), default=DEFAULT_MAX_IN_FLIGHT,
    show_default=True, envvar="STEPWISE_MAX_IN_FLIGHT",
    help="HTTP requests handled at once; more get 503 with Retry-After  "
         "[env STEPWISE_MAX_IN_FLIGHT]")

#: Default grace period on SIGTERM, in seconds.
DEFAULT_GRACE_S = 10.0
#: Exit status when the worker restarts itself to shed stuck threads (EX_TEMPFAIL).
EXIT_RESTART = 75

def signing_key_options(command: Any) -> Any:
    command = click.option(
        "--signing-key-fallback-file", envvar="STEPWISE_SIGNING_KEY_FALLBACK_FILE",
        default=None, help="Read the fallback signing key from this file  [env "
                           "STEPWISE_SIGNING_KEY_FALLBACK_FILE]")(command)
    command = click.option(
        "--signing-key-fallback", envvar="STEPWISE_SIGNING_KEY_FALLBACK", default=None,
        help="A second signing key accepted while keys rotate (apps may sync with it and sign "
             "their answers with it; calls are still signed with --signing-key): see "
             "'Rotating the signing key' in docs/inngest-sdk.md  [env "
             "STEPWISE_SIGNING_KEY_FALLBACK]")(command)
    command = click.option(
        "--signing-key-file", envvar="STEPWISE_SIGNING_KEY_FILE", default=None,
        help="Read the signing key from this file  [env STEPWISE_SIGNING_KEY_FILE]")(command)
    return click.option(
        "--signing-key", envvar="STEPWISE_SIGNING_KEY", default=None,
        help="The Inngest signing key shared with SDK apps (their INNGEST_SIGNING_KEY): calls "
             "to apps are signed with it and their answers checked  [env "
             "STEPWISE_SIGNING_KEY]")(command)


def _sdk_hosts(_: Any, param: click.Parameter, values: tuple[str, ...]
               ) -> frozenset[str] | None:
    """`--sdk-allow-host` names, lower-cased; None (any host) when none is given."""
    for name in values:
        if not name or "/" in name or name.count(":") == 1 or not name.isprintable() \
                or " " in name:
            raise click.BadParameter(f"{name!r} is not a host name (no scheme, port or path)")
    return frozenset(h.lower() for h in values) if values else None


def sdk_allow_host_option(help_text: str) -> Callable[[Any], Any]:
    return click.option(
        "--sdk-allow-host", "sdk_hosts", multiple=True, metavar="HOST", callback=_sdk_hosts,
        envvar="STEPWISE_SDK_ALLOW_HOSTS",
        help=help_text + "  [env STEPWISE_SDK_ALLOW_HOSTS, space-separated]")


def _signing_key(value: str | None, file: str | None, what: str = "signing key"
                 ) -> str | None:
    from .signing import SigningKeyError, check_key

    key = _key(value, file, what)
    if key is None:
        return None
    try:
        return check_key(key)
    except SigningKeyError as exc:
        raise click.UsageError(f"{what}: {exc}") from None


def _signing_keys(key: str | None, key_file: str | None, fallback: str | None,
                  fallback_file: str | None) -> tuple[str | None, str | None]:
    """The signing key and its fallback, from `signing_key_options`' flags."""
    signing_key = _signing_key(key, key_file)
    signing_fallback = _signing_key(fallback, fallback_file, "fallback signing key")
    if signing_fallback is not None and signing_key is None:
        raise click.UsageError("--signing-key-fallback is accepted beside a --signing-key: "
                               "give both while keys rotate")
    if signing_fallback is not None and signing_key is not None and \
            _strip(signing_fallback) == _strip(signing_key):
        raise click.UsageError("the fallback signing key is the signing key itself")
    return signing_key, signing_fallback


def _strip(key: str) -> str:
    from .signing import strip_prefix

    return strip_prefix(key).lower()


def signin_options(command: Any) -> Any:
    """Flags of the roles' keys, dashboard sessions and single sign-on (`stepwise server`)."""
    for name, what in (("viewer", "reads the API and dashboard"),
                       ("operator", "also replays, cancels and sends events")):
        env = f"STEPWISE_{name.upper()}_KEY"
        command = click.option(f"--{name}-key-file", envvar=f"{env}_FILE", default=None,
                               help=f"Read the {name} key from this file  [env {env}_FILE]"
                               )(command)
        command = click.option(f"--{name}-key", envvar=env, default=None,
                               help=f"A key for the {name} role, which {what} (sign in to "
                                    f"the dashboard with it, or send it as Bearer)  "
                                    f"[env {env}]")(command)
    command = click.option(
        "--session-hours", type=click.FloatRange(min=0.05, max=24 * 90), default=12.0,
        show_default=True, envvar="STEPWISE_SESSION_HOURS",
        help="How long a dashboard sign-in lasts  [env STEPWISE_SESSION_HOURS]")(command)
    command = click.option(
        "--oidc-issuer", envvar="STEPWISE_OIDC_ISSUER", default=None, metavar="URL",
        help="Single sign-on to the dashboard with this OpenID Connect provider (its issuer "
             "URL, https)  [env STEPWISE_OIDC_ISSUER]")(command)
    command = click.option("--oidc-client-id", envvar="STEPWISE_OIDC_CLIENT_ID", default=None,
                           help="This server's client id at the provider  "
                                "[env STEPWISE_OIDC_CLIENT_ID]")(command)
    command = click.option("--oidc-client-secret-file",
                           envvar="STEPWISE_OIDC_CLIENT_SECRET_FILE", default=None,
                           help="Read the client secret from this file  "
                                "[env STEPWISE_OIDC_CLIENT_SECRET_FILE]")(command)
    command = click.option("--oidc-client-secret", envvar="STEPWISE_OIDC_CLIENT_SECRET",
                           default=None, help="The client secret at the provider  "
                                              "[env STEPWISE_OIDC_CLIENT_SECRET]")(command)
    command = click.option(
        "--oidc-role", "oidc_roles", multiple=True, metavar="WHO=ROLE",
        envvar="STEPWISE_OIDC_ROLES",
        help="Who may sign in through single sign-on, as what role (viewer, operator or "
             "admin); WHO is an email address, @domain or *, the most specific match wins; "
             "repeatable. Nobody else may sign in  [env STEPWISE_OIDC_ROLES, space-separated]"
    )(command)
    return click.option(
        "--public-url", envvar="STEPWISE_PUBLIC_URL", default=None, metavar="URL",
        help="This server's address as browsers reach it (for the single sign-on redirect); "
             "without it, each request's own address  [env STEPWISE_PUBLIC_URL]")(command)


def _sign_in(options: dict[str, Any], keys: dict[str, str | None]) -> tuple[Any, dict[str, Any]]:
    """The `SignIn` of `signin_options`' flags, and the `Access` fields they give: the roles'
    keys and who single sign-on admits."""
    from .access import ROLES
    from .server.oidc import OidcClient, OidcSettings
    from .server.state import SignIn

    fields: dict[str, Any] = {}
    for name in ("viewer", "operator"):
        key = _key(options[f"{name}_key"], options[f"{name}_key_file"], f"{name} key")
        if key is not None and key in keys.values():
            raise click.UsageError(f"the {name} key must differ from the other keys")
        keys[name] = fields[f"{name}_key"] = key
    roles = []
    for rule in options["oidc_roles"]:
        who, equals, role = (part.strip() for part in rule.partition("="))
        who = who.lower()
        if not equals or role not in ROLES or not who or not who.isprintable() or \
                " " in who or not (who == "*" or "@" in who):
            raise click.BadParameter(f"{rule!r} is not WHO=ROLE (WHO an email, @domain or *; "
                                     f"ROLE one of {', '.join(ROLES)})",
                                     param_hint="--oidc-role")
        roles.append((who, role))
    fields["oidc_roles"] = tuple(roles)
    oidc = None
    issuer, client_id = options["oidc_issuer"], options["oidc_client_id"]
    secret = _key(options["oidc_client_secret"], options["oidc_client_secret_file"],
                  "OIDC client secret")
    if (issuer is None) != (client_id is None):
        raise click.UsageError("single sign-on needs both --oidc-issuer and --oidc-client-id")
    if issuer is not None:
        if not roles:
            raise click.UsageError("single sign-on admits nobody without --oidc-role rules "
                                   "(e.g. --oidc-role @example.com=viewer)")
        try:
            oidc = OidcClient(OidcSettings(issuer, client_id, secret,
                                           public_url=options["public_url"]))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--oidc-issuer") from None
    elif roles or secret is not None:
        raise click.UsageError("--oidc-role and --oidc-client-secret need --oidc-issuer")
    return SignIn(session_ms=int(options["session_hours"] * 3_600_000), oidc=oidc), fields


grace_option = click.option(
    "--grace-seconds", type=float, default=DEFAULT_GRACE_S, show_default=True,
    callback=_positive, envvar="STEPWISE_GRACE_SECONDS",
    help="On SIGTERM or Ctrl-C, how long running functions get to finish; then their runs "
         "are handed back to other workers and the process exits (within about 3 s more), "
         "whatever the code does  [env STEPWISE_GRACE_SECONDS]")
max_stuck_option = click.option(
    "--max-stuck-threads", type=click.IntRange(min=0), default=2, show_default=True,
    help="Exit (status 75, for the supervisor to restart the process) when more threads than "
         "this are stuck in user code that overran its attempt timeout and cannot be killed")

def execution_options(fn: Any) -> Any:
    """Where and how user code runs in a worker (`InProcessExecutor`)."""
    fn = click.option(
        "--max-memory-per-child", type=click.IntRange(min=1), default=None, metavar="MB",
        help="Kill a process running step code (executor=\"process\") whose memory goes "
             "over this many MiB; its attempt fails and is retried")(fn)
    fn = click.option(
        "--max-tasks-per-child", type=click.IntRange(min=1), default=None, metavar="N",
        help="Replace a process running step code after N steps (code that leaks)")(fn)
    fn = click.option(
        "--processes", type=click.IntRange(min=1), default=None, metavar="N",
        help="Processes at most for step code of executor=\"process\" (started on first "
             "use)  [default: one per core]")(fn)
    fn = click.option(
        "--sdk-call-timeout", "sdk_call_timeout", type=float,
        default=DEFAULT_CALL_TIMEOUT_S, show_default=True, callback=_positive,
        envvar="STEPWISE_SDK_CALL_TIMEOUT", metavar="SECONDS",
        help="Longest one call to an SDK app may take (shorter for a function whose "
             "timeouts.finish is); past it the attempt fails with CallTimeout and is retried "
             " [env STEPWISE_SDK_CALL_TIMEOUT]")(fn)
    return click.option(
        "--loop-stall-seconds", type=float, default=DEFAULT_LOOP_STALL_S, show_default=True,
        callback=_positive, envvar="STEPWISE_LOOP_STALL_SECONDS",
        help="Async code that holds its event loop this long without yielding fails its "
             "attempt (naming the line), and the other runs on that loop move to a fresh one "
             " [env STEPWISE_LOOP_STALL_SECONDS]")(fn)


def _executing(options: dict[str, Any]) -> dict[str, Any]:
    """Worker keyword arguments from `execution_options` (removed from `options`)."""
    size = options.pop("processes")
    processes = ProcessOptions(max_tasks_per_child=options.pop("max_tasks_per_child"),
                               max_memory_mb=options.pop("max_memory_per_child"),
                               **({} if size is None else {"size": size}))
    return {"loop_stall_s": options.pop("loop_stall_seconds"), "processes": processes,
            "sdk_call_timeout_s": options.pop("sdk_call_timeout")}


def _window(_: Any, param: click.Parameter, value: str | None) -> int | str | None:
    """A retention flag: 30d, 12h, or forever; "unset" (the stored setting stays) if absent."""
    if value is None:
        return "unset"
    try:
        return durations.parse_window(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}, or forever") from None


def retention_options(fn: Any) -> Any:
    fn = click.option(
        "--failed-retention", metavar="DURATION", callback=_window,
        envvar="STEPWISE_FAILED_RETENTION",
        help="Keep failed runs this long after they ended (e.g. 90d, or forever); stored in "
             "the database for every server. Default: as stored, else 90d")(fn)
    return click.option(
        "--retention", metavar="DURATION", callback=_window, envvar="STEPWISE_RETENTION",
        help="Keep completed, cancelled and skipped runs this long after they ended (e.g. "
             "30d, or forever), then delete them with their steps, logs and the events "
             "nothing else holds; stored in the database for every server. A function's own "
             "retention (@app.function(retention=)) wins. Default: as stored, else 30d")(fn)


concurrency_option = click.option("--concurrency", type=int, default=10, show_default=True,
                                  callback=_positive, help="Runs executed at once per process")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug details")
def main(verbose: bool) -> None:
    """stepwise: durable background functions made of memoized steps."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # one line per call to an SDK app would drown the console
        logging.getLogger("httpx").setLevel(logging.WARNING)
    from . import tracing

    tracing.configure()  # off unless OTEL_* variables ask for traces


@main.command()
@click.argument("app_spec", metavar="[MODULE:APP]", required=False)
@click.option("-u", "--sdk-url", "sdk_urls", multiple=True, metavar="URL",
              help="The serve URL of an app written with an Inngest SDK (e.g. "
                   "http://127.0.0.1:3000/api/inngest; repeatable): asked to sync, then its "
                   "functions run here")
@click.option("--port", type=click.IntRange(1, 65535), default=8288, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address needs --insecure")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also accept requests addressed to this host name (repeatable); "
                   "localhost, 127.0.0.1 and ::1 always are")
@click.option("--insecure", is_flag=True,
              help="Allow listening on a non-loopback address although dev mode has no "
                   "credentials")
@db_option
@concurrency_option
@lease_option
@poll_option
@limits_options
@max_in_flight_option
@grace_option
@execution_options
@retention_options
def dev(app_spec: str | None, sdk_urls: tuple[str, ...], port: int, host: str,
        allow_hosts: tuple[str, ...], insecure: bool,
        db: str | None, concurrency: int, lease_seconds: float, poll_seconds: float,
        max_in_flight: int, grace_seconds: float, retention: int | str | None,
        failed_retention: int | str | None, **limits: Any) -> None:
    """Server, worker and dashboard in one process, on embedded SQLite by default.

    No credentials: it listens on localhost only, accepts requests addressed to local host
    names only, and refuses cross-site requests, so a web page cannot reach it.
    """
    if not _loopback(host) and not insecure:
        raise click.UsageError(f"dev mode has no credentials: listening on {host!r} would let "
                               "anyone who reaches it read and control every run. Use "
                               "`stepwise server` with keys, or pass --insecure on purpose.")
    for url in sdk_urls:
        if not url.startswith(("http://", "https://")):
            raise click.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--sdk-url")
    app = load_app(app_spec) if app_spec else None
    access = Access.dev(frozenset(h.lower() for h in allow_hosts))
    executing = _executing(limits)
    asyncio.run(_serve(app=app, db=db, host=host, port=port, access=access,
                       gateway_hosts=HostPolicy(any_host=True),  # as Inngest's dev server
                       concurrency=concurrency, lease_seconds=lease_seconds,
                       poll_seconds=poll_seconds, with_http=True, limits=_limits(limits),
                       max_in_flight=max_in_flight, grace=grace_seconds, sdk_urls=sdk_urls,
                       retention=(retention, failed_retention), **executing))


def _loopback(host: str) -> bool:
    if host.lower() in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@db_option
@click.option("--port", type=click.IntRange(1, 65535), default=8288, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--api-key", envvar="STEPWISE_API_KEY", default=None,
              help="Key for the management API, dashboard and metrics (Bearer token, or the "
                   "password of the dashboard login)  [env STEPWISE_API_KEY]")
@click.option("--api-key-file", envvar="STEPWISE_API_KEY_FILE", default=None,
              help="Read the API key from this file  [env STEPWISE_API_KEY_FILE]")
@click.option("--event-key", envvar="STEPWISE_EVENT_KEY", default=None,
              help="Key that only allows sending events  [env STEPWISE_EVENT_KEY]")
@click.option("--event-key-file", envvar="STEPWISE_EVENT_KEY_FILE", default=None,
              help="Read the event key from this file  [env STEPWISE_EVENT_KEY_FILE]")
@click.option("--insecure", is_flag=True,
              help="Start without keys: anyone who reaches the port can read and control "
                   "every run. Only for a network you fully trust.")
@signing_key_options
@sdk_allow_host_option("Only sync SDK apps served at this host name (repeatable; the app's "
                       "URL and every function's must match): whoever holds the signing key "
                       "then cannot point runs, and the run data the workers send, elsewhere. "
                       "Without it, any host")
@click.option("--allow-unconfirmed-sync", "unconfirmed_syncs", is_flag=True,
              envvar="STEPWISE_ALLOW_UNCONFIRMED_SYNC",
              help="Store an SDK app's posted sync as posted, without asking the app to "
                   "confirm it in-band: for apps that cannot answer in-band (older SDKs, "
                   "INNGEST_ALLOW_IN_BAND_SYNC=false). Then a captured sync can be replayed "
                   "by whoever saw it; prefer --sdk-allow-host with it  "
                   "[env STEPWISE_ALLOW_UNCONFIRMED_SYNC]")
@signin_options
@limits_options
@max_in_flight_option
@retention_options
def server(db: str | None, port: int, host: str, api_key: str | None,
           api_key_file: str | None, event_key: str | None, event_key_file: str | None,
           signing_key: str | None, signing_key_file: str | None,
           signing_key_fallback: str | None, signing_key_fallback_file: str | None,
           sdk_hosts: frozenset[str] | None, unconfirmed_syncs: bool,
           insecure: bool, max_in_flight: int, retention: int | str | None,
           failed_retention: int | str | None, **options: Any) -> None:
    """The HTTP API and dashboard alone (run workers separately).

    Needs two keys, from flags, environment or files: the API key (management API,
    dashboard, metrics, docs) and the event key (sending events only). Without them it refuses
    to start, unless told --insecure. Keys are never printed whole. Inngest SDK apps sync
    with the signing key (--signing-key), and send events to /e/<event key>; their runs are
    executed by `stepwise worker --sdk` with the same signing key.
    """
    signing_key, signing_fallback = _signing_keys(
        signing_key, signing_key_file, signing_key_fallback, signing_key_fallback_file)
    api_key = _key(api_key, api_key_file, "API key")
    event_key = _key(event_key, event_key_file, "event key")
    if (api_key is None or event_key is None) and not insecure:
        missing = " and ".join(name for name, key in (("--api-key", api_key),
                                                       ("--event-key", event_key)) if not key)
        raise click.UsageError(
            f"no {missing}: `stepwise server` needs an API key and an event key (flags, "
            "STEPWISE_API_KEY/STEPWISE_EVENT_KEY, or --api-key-file/--event-key-file). Make "
            "one with `stepwise new-key`. To run without credentials on purpose, pass "
            "--insecure.")
    if api_key is not None and api_key == event_key:
        raise click.UsageError("the API key and the event key must differ: the event key is "
                               "given to event senders and must not manage runs")
    if insecure and (api_key is None or event_key is None):
        click.echo("warning: --insecure: " + ("the API is open to anyone who reaches "
                   f"{host}:{port}" if api_key is None else "sending events needs no key"),
                   err=True)
    else:
        click.echo(f"API key {mask(api_key or '')}, event key {mask(event_key or '')}")
    sign_in, role_fields = _sign_in(options, {"API key": api_key, "event key": event_key})
    if api_key is None and (role_fields["viewer_key"] or role_fields["operator_key"]
                            or sign_in.oidc):
        raise click.UsageError("roles' keys and single sign-on need an --api-key (without "
                               "one, everything is open)")
    access = Access(api_key=api_key, event_key=event_key, signing_key=signing_key,
                    signing_fallback=signing_fallback, sdk_hosts=sdk_hosts,
                    unconfirmed_syncs=unconfirmed_syncs, **role_fields)
    asyncio.run(_serve(app=None, db=db, host=host, port=port, access=access,
                       concurrency=1, lease_seconds=30.0, poll_seconds=1.0, with_http=True,
                       limits=_limits(options), max_in_flight=max_in_flight,
                       retention=(retention, failed_retention), sign_in=sign_in))


@main.command("new-key")
@click.option("--signing", is_flag=True,
              help="A signing key for SDK apps (signkey-prod-<64 hex digits>)")
def new_key(signing: bool) -> None:
    """Print a new random key (for --api-key or --event-key, or --signing-key)."""
    click.echo(f"signkey-prod-{secrets.token_hex(32)}" if signing else
               secrets.token_urlsafe(32))


def _function_ids(_: Any, param: click.Parameter, values: tuple[str, ...]
                  ) -> list[str] | None:
    """`--functions a,b --functions c` to ["a", "b", "c"]; None when not given."""
    if not values:
        return None
    ids = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not ids:
        raise click.BadParameter("names no function (give function ids: ID,ID)")
    return ids


def _function_limits(_: Any, param: click.Parameter, values: tuple[str, ...]
                     ) -> dict[str, int]:
    """`--function-concurrency a=1,b=2 --function-concurrency c=1` to {"a": 1, ...}."""
    limits: dict[str, int] = {}
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            function_id, equals, number = (x.strip() for x in part.partition("="))
            if not equals or not function_id:
                raise click.BadParameter(f"{part!r} is not ID=N (e.g. transcribe-audio=1)")
            try:
                limit = int(number)
            except ValueError:
                limit = 0
            if limit < 1:
                raise click.BadParameter(f"{part!r}: N must be a positive integer (at most N "
                                         f"runs of {function_id!r} at once)")
            if function_id in limits:
                raise click.BadParameter(f"{function_id!r} is given twice")
            limits[function_id] = limit
    return limits


#: The `stepwise worker` flag of each `Worker` option choosing functions.
_SELECTION_FLAGS = {"functions": "--functions", "exclude": "--exclude",
                    "function_concurrency": "--function-concurrency"}


@main.command()
@click.argument("app_spec", metavar="[MODULE:APP]", required=False)
@click.option("--functions", "only", multiple=True, metavar="ID,ID", callback=_function_ids,
              help="Serve only these functions of MODULE:APP (comma-separated, repeatable): a "
                   "dedicated worker; the others are left to other workers")
@click.option("--exclude", multiple=True, metavar="ID,ID", callback=_function_ids,
              help="Serve every function of MODULE:APP but these (comma-separated, "
                   "repeatable)")
@click.option("--function-concurrency", "function_limits", multiple=True, metavar="ID=N",
              callback=_function_limits,
              help="At most N runs of function ID at once in this process, executing or "
                   "leased ahead (repeatable, or comma-separated; within --concurrency), "
                   "e.g. for a model loaded once per process")
@click.option("--sdk", "sdk_apps", is_flag=True,
              help="Also execute the runs of every synced Inngest SDK app (over HTTP)")
@sdk_allow_host_option("Only call SDK apps at this host name (repeatable): a run of a "
                       "function synced at another host (by an older server, or one without "
                       "the list) fails with AppHostNotAllowed and its data is not sent. "
                       "Without it, any host")
@click.option("--gateway-allow-host", "gateway_hosts", multiple=True, metavar="HOST",
              envvar="STEPWISE_GATEWAY_ALLOW_HOSTS",
              help="A host that step.fetch and step.ai.infer requests may reach at a private, "
                   "loopback or link-local address (repeatable; * for every host); by "
                   "default they reach public addresses only  [env "
                   "STEPWISE_GATEWAY_ALLOW_HOSTS, space-separated]")
@signing_key_options
@db_option
@concurrency_option
@lease_option
@poll_option
@limits_options
@grace_option
@max_stuck_option
@execution_options
def worker(app_spec: str | None, only: list[str] | None, exclude: list[str] | None,
           function_limits: dict[str, int], sdk_apps: bool,
           sdk_hosts: frozenset[str] | None, gateway_hosts: tuple[str, ...],
           signing_key: str | None,
           signing_key_file: str | None, signing_key_fallback: str | None,
           signing_key_fallback_file: str | None, db: str | None, concurrency: int,
           lease_seconds: float, poll_seconds: float, grace_seconds: float,
           max_stuck_threads: int, **limits: Any) -> None:
    """A worker alone: executes the app's runs from the database, and with --sdk the runs of
    SDK apps (signed with --signing-key, which a `stepwise server` with a signing key needs).

    --functions and --exclude make a dedicated worker, serving some of the app's functions
    only; runs of a function no live worker serves stay queued (`GET /api/v1/workers` lists
    them) until one does.
    """
    if app_spec is None and not sdk_apps:
        raise click.UsageError("name an app (MODULE:APP), or pass --sdk to execute SDK apps' "
                               "runs, or both")
    if app_spec is None and (only is not None or exclude or function_limits):
        raise click.UsageError("--functions, --exclude and --function-concurrency choose "
                               "among the functions of a Python app: name it (MODULE:APP)")
    signing_key, signing_fallback = _signing_keys(
        signing_key, signing_key_file, signing_key_fallback, signing_key_fallback_file)
    if signing_key is not None and not sdk_apps:
        raise click.UsageError("--signing-key is for SDK apps: add --sdk")
    if sdk_hosts is not None and not sdk_apps:
        raise click.UsageError("--sdk-allow-host is for SDK apps: add --sdk")
    if gateway_hosts and not sdk_apps:
        raise click.UsageError("--gateway-allow-host is for SDK apps: add --sdk")
    app = load_app(app_spec) if app_spec else None
    if app is not None and (only is not None or exclude or function_limits):
        from .worker import FunctionSelectionError, select_functions

        try:
            select_functions(app.id, list(app.functions), functions=only,
                             exclude=exclude or (), function_concurrency=function_limits)
        except FunctionSelectionError as exc:
            raise click.BadParameter(exc.detail,
                                     param_hint=f"'{_SELECTION_FLAGS[exc.option]}'") from None
    executing = _executing(limits)
    asyncio.run(_serve(app=app, db=db, host="", port=0, access=Access(),
                       concurrency=concurrency, lease_seconds=lease_seconds,
                       poll_seconds=poll_seconds, with_http=False, limits=_limits(limits),
                       grace=grace_seconds, max_stuck=max_stuck_threads,
                       sdk_urls=() if sdk_apps else None, signing_key=signing_key,
                       signing_fallback=signing_fallback, sdk_hosts=sdk_hosts,
                       gateway_hosts=HostPolicy.from_names(gateway_hosts),
                       functions=only, exclude=exclude or (),
                       function_concurrency=function_limits, **executing))


async def _serve(*, app: App | None, db: str | None, host: str, port: int,
                 access: Access, concurrency: int, lease_seconds: float,
                 poll_seconds: float, with_http: bool, limits: Limits,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, grace: float = DEFAULT_GRACE_S,
                 max_stuck: int | None = None, sdk_urls: tuple[str, ...] | None = None,
                 signing_key: str | None = None, signing_fallback: str | None = None,
                 sdk_hosts: frozenset[str] | None = None,
                 gateway_hosts: HostPolicy | None = None,
                 functions: list[str] | None = None,
                 exclude: Sequence[str] = (),
                 function_concurrency: dict[str, int] | None = None,
                 loop_stall_s: float = DEFAULT_LOOP_STALL_S,
                 processes: ProcessOptions | None = None,
                 sdk_call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 retention: tuple[int | str | None, int | str | None] = ("unset", "unset"),
                 sign_in: Any = None) -> None:
    """`retention`: the completed and failed runs' windows to store ("unset": keep what is
    stored); with the HTTP server runs the background retention passes. `sdk_urls` (None: no
    SDK apps here; may be empty): execute the runs of synced SDK apps in this process too,
    after asking the apps at these URLs to sync (calling only apps at `sdk_hosts`, when
    given). `functions`, `exclude` and
    `function_concurrency`: which of the app's functions its worker serves, and how many runs
    of each at once (see `Worker`). `gateway_hosts`: where `step.fetch` and `step.ai.infer`
    requests may go (default: public addresses only)."""
    import uvicorn

    from .remote.executor import RemoteApps
    from .remote.gateway import Gateway
    from .server import create_server
    from .server.errors import JsonErrorsH11
    from .storage import open_storage
    from .worker import Worker

    storage = open_storage(db)
    try:
        await storage.open()
    except ConnectionError as exc:  # it names the database already
        raise click.ClickException(str(exc)) from None
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        raise click.ClickException(f"cannot open the database {_shown(db)}: {exc}") from None
    worker_ = None
    remote: RemoteApps | None = None
    remote_task: asyncio.Task[None] | None = None
    pruning: asyncio.Task[None] | None = None
    exit_code = 0
    try:
        if with_http:
            pruning = asyncio.create_task(_retention(storage, retention),
                                          name="stepwise-retention")
        if app is not None:
            worker_ = Worker(app, storage, concurrency=concurrency, lease_seconds=lease_seconds,
                             poll_interval=poll_seconds, limits=limits, functions=functions,
                             exclude=exclude, function_concurrency=function_concurrency,
                             loop_stall_s=loop_stall_s, processes=processes)
            await worker_.start()
            click.echo(f"stepwise worker {worker_.id}: app {app.id!r} " +
                       _serving(worker_.functions, len(app.functions),
                                worker_.function_concurrency, concurrency))
        if sdk_urls is not None:
            remote = RemoteApps(storage, sdk_urls, signing_key=signing_key,
                                signing_fallback=signing_fallback,
                                call_timeout_s=sdk_call_timeout_s, allowed_hosts=sdk_hosts,
                                gateway=Gateway(gateway_hosts, max_response_bytes=(
                                    limits.step_output_bytes)),
                                concurrency=concurrency,
                                lease_seconds=lease_seconds, poll_interval=poll_seconds)
            remote_task = asyncio.create_task(remote.run(), name="stepwise-sdk-apps")
            if not with_http:
                click.echo("stepwise worker: executing the runs of synced SDK apps" +
                           (" (signed calls)" if signing_key else ""))
        if with_http:
            config = uvicorn.Config(create_server(storage, access=access, limits=limits,
                                                  max_in_flight=max_in_flight,
                                                  sign_in=sign_in),
                                    host=host, port=port, log_level="warning", lifespan="off",
                                    http=JsonErrorsH11,
                                    timeout_graceful_shutdown=max(1, int(grace)))
            http = uvicorn.Server(config)
            click.echo(f"stepwise is running: dashboard and API at http://{host}:{port}/",
                       err=False)
            # uvicorn stops serving on SIGTERM, then raises the signal again once done; with
            # the default handler in place that kills the process before the worker below
            # hands its runs back. Ours lets `serve` return and the graceful stop run.
            previous = signal.signal(signal.SIGTERM, _stopping_already)
            try:
                await http.serve()
            finally:
                signal.signal(signal.SIGTERM, previous)
            if not http.started:
                raise click.ClickException(f"could not listen on {host}:{port}")
        elif await _until_signal_or_stuck(worker_, max_stuck):
            exit_code = EXIT_RESTART
    finally:
        if pruning is not None:
            pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruning
        if remote_task is not None and remote is not None:
            remote_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await remote_task
            await remote.stop(grace)
        if worker_ is not None:
            await worker_.stop(grace)
        await storage.close()
    if worker_ is not None and (worker_.stuck_threads or exit_code):
        # Threads stuck in user code would keep the interpreter from exiting: leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


async def _retention(storage: Any, given: tuple[int | str | None, int | str | None]) -> None:
    """Store the retention flags given, say what applies, then prune in the background."""
    from .engine import Engine
    from .engine.retention import Windows
    from .pruner import Pruner

    engine = Engine(storage)
    try:
        stored = await engine.retention_windows()
        completed, failed = given
        windows = Windows(stored.completed_ms if isinstance(completed, str) else completed,
                          stored.failed_ms if isinstance(failed, str) else failed)
        if windows != stored:
            await engine.set_retention_windows(windows)
        logging.getLogger("stepwise.retention").info(
            "retention: completed runs %s, failed runs %s", durations.show(windows.completed_ms),
            durations.show(windows.failed_ms))
    except Exception as exc:  # the database is down, say: the server still serves
        logging.getLogger("stepwise.retention").warning("retention setting not applied: %s",
                                                        exc)
    await Pruner(engine).run()


def _serving(served: list[str], of: int, limits: dict[str, int], concurrency: int) -> str:
    """What a worker serves, for its start-up line."""
    if len(served) == of and not limits:
        return f"with {of} functions, concurrency {concurrency}"  # as before dedicated workers
    what = (f"serving all {of} functions" if len(served) == of else
            f"serving {len(served)} of its {of} functions: {', '.join(served)}")
    if limits:
        what += " (at most " + ", ".join(f"{n} {f}" for f, n in limits.items()) + " at once)"
    return f"{what}; concurrency {concurrency}"


def _stopping_already(signum: int, frame: object) -> None:
    """SIGTERM once the HTTP server has begun its graceful stop: the stop goes on."""
    logging.getLogger("stepwise").info("stopping: handing back the runs in progress")


def _shown(db: str | None) -> str:
    """The database URL for messages, without a password."""
    from .storage.base import redact_url

    return redact_url(db) if db else ".stepwise/stepwise.db"


async def _until_signal_or_stuck(worker: Any | None, max_stuck: int | None) -> bool:
    """Wait for SIGTERM or SIGINT; True if instead too many threads got stuck in user code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
            return False
        stuck = worker.stuck_threads if worker is not None else 0
        if max_stuck is not None and stuck > max_stuck:
            logging.getLogger("stepwise.worker").error(
                "%d threads are stuck in user code past their attempt timeout (more than "
                "--max-stuck-threads %d): exiting with status %d so the process is restarted",
                stuck, max_stuck, EXIT_RESTART)
            return True


# --- client commands ---------------------------------------------------------------------

api_key_option = click.option("--api-key", envvar="STEPWISE_API_KEY", default=None,
                              help="The server's API key  [env STEPWISE_API_KEY]")


def _call(url: str, method: str, path: str, body: Any = None, key: str | None = None
          ) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
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
@click.option("--event-key", envvar="STEPWISE_EVENT_KEY", default=None,
              help="The server's event key  [env STEPWISE_EVENT_KEY]")
@api_key_option
def send(name: str, data: str, event_id: str | None, url: str, event_key: str | None,
         api_key: str | None) -> None:
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
    result = _call(url, "POST", "/api/v1/events", event, event_key or api_key)
    click.echo(" ".join(result["ids"]))


def _since(value: str | None) -> str | None:
    """`30m`, `2h`, `7d` ago, or an ISO 8601 time, as the ISO time the API takes."""
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return (datetime.now(UTC) - timedelta(milliseconds=durations.parse_ms(value))
                ).isoformat()
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (30m, 2h, 7d) nor an ISO "
                                 "8601 time", param_hint="--since") from None


def _listing(url: str, api_key: str | None, kind: str, as_json: bool,
             **params: Any) -> list[dict[str, Any]]:
    """GET /api/v1/<kind> with the given filters. Prints the JSON (with `as_json`) or "no
    <kind>" itself; returns the items left for the caller to show as a table."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    result = _call(url, "GET", f"/api/v1/{kind}?{query}", key=api_key)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return []
    if not result[kind]:
        click.echo(f"no {kind}")
    return list(result[kind])


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                   .rstrip())


def _error_line(error: Any) -> str:
    if not error:
        return ""
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    return message.splitlines()[0][:80] if message else ""


def _listed_error(run: dict[str, Any]) -> str:
    """A listed run's error: an error over the list's preview is left out of the list, so
    its first line (`error_title`) stands for it."""
    if run["error"] is None and run.get("error_truncated"):
        return str(run.get("error_title") or "(error too long to list; see `stepwise run`)")[:80]
    return _error_line(run["error"])


@main.command()
@click.option("--status", type=click.Choice([s.value for s in RunStatus]))
@click.option("--function", "function_id", default=None)
@click.option("--event", "event_name", default=None, help="Only runs of events of this name")
@click.option("--since", default=None, help="Created since: 30m, 2h, 7d, or an ISO 8601 time")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@url_option
@api_key_option
def runs(status: str | None, function_id: str | None, event_name: str | None,
         since: str | None, limit: int, as_json: bool, url: str, api_key: str | None) -> None:
    """List recent runs, newest first."""
    found = _listing(url, api_key, "runs", as_json, status=status, function=function_id,
                     event_name=event_name, since=_since(since), limit=limit)
    if found:
        _table([[r["id"], r["function_id"], r["status"], str(r["failed_attempts"]),
                 str(r["attempts"] - 1), r["started_at"] or "-", _listed_error(r)]
                for r in found],
               ["RUN", "FUNCTION", "STATUS", "FAILURES", "REPLAYS", "STARTED", "ERROR"])


@main.command("run")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@url_option
@api_key_option
def show_run(run_id: str, as_json: bool, url: str, api_key: str | None) -> None:
    """Show one run: its event, steps, failed attempts (with stack traces) and links."""
    run = _call(url, "GET", f"/api/v1/runs/{urllib.parse.quote(run_id)}", key=api_key)
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo(f"run       {run['id']}\nfunction  {run['function_id']} (app {run['app_id']})"
               f"\nstatus    {run['status']}\nstarted   {run['started_at'] or '-'}"
               f"\nended     {run['ended_at'] or '-'}")
    if run.get("event"):
        event = run["event"]
        click.echo(f"event     {event['name']} {event['id']}  {json.dumps(event['data'])}")
    for name in ("parent_run_id", "origin_run_id"):
        if run.get(name):
            click.echo(f"{name.split('_')[0]:<9} {run[name]}")
    for child in run.get("children", []):
        click.echo(f"started   {child['id']} {child['function_id']} ({child['status']})")
    if run["output"] is not None:
        click.echo(f"output    {json.dumps(run['output'])}")
    if run["steps"]:
        click.echo("")
        _table([[s.get("name") or s["id"], s["status"], str(s["attempts"]), s["ended_at"] or "-",
                 _error_line(s["error"])] for s in run["steps"]],
               ["STEP", "STATUS", "ATTEMPTS", "ENDED", "ERROR"])
    names = {s["id"]: s.get("name") or s["id"] for s in run["steps"]}  # SDK ids are hashes
    for failure in run.get("failures", []):
        error = failure["error"] or {}
        where = (f"step {names.get(failure['step_id'], failure['step_id'])}"
                 if failure["step_id"] else "function body")
        click.echo(f"\nfailed attempt {failure['attempt']} of {where} at {failure['ended_at']}: "
                   f"{error.get('name', '')}: {error.get('message', '')}")
        for line in str(error.get("stack", "")).rstrip().splitlines():
            click.echo(f"  {line}")
    if run.get("logs"):
        click.echo("\nlog:")
        for line in run["logs"]:
            where = f" [{line['step_id']}]" if line["step_id"] else ""
            click.echo(f"  {line['at']} {line['level']:<7}{where} {line['message']}")
    if run["error"]:
        click.echo(f"\nerror     {run['error'].get('name', '')}: {run['error'].get('message')}")


@main.command()
@click.option("--name", default=None, help="Only events of this name")
@click.option("--since", default=None, help="Received since: 30m, 2h, 7d, or an ISO time")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@url_option
@api_key_option
def events(name: str | None, since: str | None, limit: int, as_json: bool, url: str,
           api_key: str | None) -> None:
    """List stored events, newest first."""
    found = _listing(url, api_key, "events", as_json, name=name, since=_since(since),
                     limit=limit)
    if found:
        _table([[e["id"], e["name"], e["received_at"] or "-",
                 "(large)" if e["data_truncated"] else json.dumps(e["data"])[:60]]
                for e in found], ["EVENT", "NAME", "RECEIVED", "DATA"])


@main.command()
@click.argument("run_id")
@url_option
@api_key_option
def wake(run_id: str, url: str, api_key: str | None) -> None:
    """End a run's sleeps and waits now, as if their time had come (a wait gets no event);
    a run waiting to be retried is retried now."""
    run = _call(url, "POST", f"/api/v1/runs/{run_id}/wake", key=api_key)
    click.echo(f"{run['id']} {run['status']}")


@main.command()
@click.argument("run_id")
@url_option
@api_key_option
def replay(run_id: str, url: str, api_key: str | None) -> None:
    """Start a failed or cancelled run again (completed steps keep their results)."""
    run = _call(url, "POST", f"/api/v1/runs/{run_id}/replay", key=api_key)
    click.echo(f"{run['id']} {run['status']} (attempt {run['attempts']})")


@main.command()
@click.argument("run_id")
@url_option
@api_key_option
def cancel(run_id: str, url: str, api_key: str | None) -> None:
    """Cancel a run; a running one stops at its next step."""
    run = _call(url, "POST", f"/api/v1/runs/{run_id}/cancel", key=api_key)
    click.echo(f"{run['id']} {run['status']}")


def _duration(_: Any, param: click.Parameter, value: str | None) -> str | None:
    """A duration flag (30d, 12h, 1s), checked here so a typo fails before any request."""
    if value is not None:
        try:
            durations.parse_ms(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _until_done(url: str, path: str, body: dict[str, Any], api_key: str | None,
                deleted: Callable[[dict[str, Any]], dict[str, int]]) -> dict[str, int]:
    """POST `body` to `path` again while the answer says `more`; the runs, steps and events
    deleted in all (`deleted` finds them in an answer)."""
    total = {"runs": 0, "steps": 0, "events": 0}
    while True:
        done = _call(url, "POST", path, body, key=api_key)
        for what in total:
            total[what] += deleted(done)[what]
        if not done["more"]:
            return total


@main.command()
@click.option("--older-than", required=True, metavar="DURATION", callback=_duration,
              help="Delete finished runs that ended longer ago than this: 30d, 12h, 1s")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted")
@url_option
@api_key_option
def prune(older_than: str, dry_run: bool, url: str, api_key: str | None) -> None:
    """Delete finished runs older than a duration, with their steps, logs and the events
    nothing else holds (never an unfinished run), through the server at --url."""
    body = {"older_than": older_than, "dry_run": dry_run}
    if dry_run:
        found = _call(url, "POST", "/api/v1/prune", body, key=api_key)
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(found["by_status"].items()))
        click.echo(f"would delete {found['runs']} runs" + (f" ({statuses})" if statuses else "")
                   + f", {found['steps']} steps, {found['events']} events")
        return
    total = _until_done(url, "/api/v1/prune", body, api_key, lambda done: done)
    click.echo(f"deleted {total['runs']} runs, {total['steps']} steps, {total['events']} "
               "events")


@main.command()
@click.option("--event-data", required=True, metavar="PATH=VALUE",
              help="The subject: events whose data has VALUE at PATH, e.g. user.id=42")
@click.option("--event-name", default=None, help="Only events of this name")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted")
@click.option("--cancel-unfinished", is_flag=True,
              help="Cancel unfinished runs that hold the data, then delete them (without it, "
                   "such runs stop the erasure)")
@url_option
@api_key_option
def erase(event_data: str, event_name: str | None, dry_run: bool, cancel_unfinished: bool,
          url: str, api_key: str | None) -> None:
    """Delete everything stored about a subject: the events whose data matches, every run
    holding one (and the runs those invoked, replay or re-run), their steps, logs and keys."""
    if "=" not in event_data:
        raise click.BadParameter("give PATH=VALUE, e.g. user.id=42", param_hint="--event-data")
    body = {"event_data": event_data, "event_name": event_name, "dry_run": dry_run,
            "cancel_unfinished": cancel_unfinished}
    if dry_run:
        found = _call(url, "POST", "/api/v1/erase", body, key=api_key)
        click.echo(f"would delete {found['events']}{'+' if found['more'] else ''} events and "
                   f"{found['runs']} runs ({found['unfinished']} unfinished)")
        return
    total = _until_done(url, "/api/v1/erase", body, api_key, lambda done: done["deleted"])
    click.echo(f"erased {total['events']} events, {total['runs']} runs, {total['steps']} "
               "steps")


if __name__ == "__main__":
    main()
